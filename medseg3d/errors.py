"""The one exception users see: a clear sentence naming the file and what is wrong."""


class MedsegError(ValueError):
    """A user-facing error (bad config, bad input file, bad checkpoint). The CLI prints it in one line."""


def medseg_cause(exc: BaseException) -> "MedsegError | None":
    """The MedsegError behind ``exc`` (MONAI wraps a transform's exception in RuntimeError), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedsegError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None

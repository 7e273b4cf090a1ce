"""The one exception users see: a clear sentence naming the file and what is wrong."""


class MedsegError(ValueError):
    """A user-facing error (bad config, bad input file, bad checkpoint). The CLI prints it in one line."""

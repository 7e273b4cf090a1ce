"""Reading a config: YAML (safe loader only) -> ``a.b=value`` overrides -> paths resolved -> validated.

``load_config(path, overrides)`` reads a YAML file, applies overrides (values parsed as YAML), resolves
relative paths written in the file against the file's folder (paths given in overrides against the current
folder), and validates. Every error names the key; an unknown key also names the closest valid one, and a
network's or loss's parameter is checked against that network's or loss's own typed parameters.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import MedsegError
from ..registry import did_you_mean
from .params import known
from .schema import Config

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "literal_error": None,
}


def _model_at(loc: tuple, root: Any = Config, skip: int = 0) -> type[BaseModel] | None:
    model: Any = root
    for part in loc[skip:]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _clean_loc(loc: tuple, root: Any = Config, skip: int = 0) -> tuple:
    """Drop pydantic's union-member tags (``int``, ``literal['all']``) that follow a leaf key; the first ``skip``
    parts are a fixed prefix (``model.params``) in front of ``root``'s own keys."""
    out: list = list(loc[:skip])
    model: Any = root
    for part in loc[skip:]:
        if isinstance(part, int):
            out.append(part)
            continue
        if model is None or part not in model.model_fields:
            if model is not None:  # an unknown key: keep it so the message can name it
                out.append(part)
            break
        out.append(part)
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return tuple(out)


def _format_error(err: dict, source: str, root: Any = Config, skip: int = 0) -> tuple[str, str]:
    loc = _clean_loc(tuple(err["loc"]), root, skip)
    key = ".".join(str(p) for p in loc)
    typ = err["type"]
    if typ == "extra_forbidden":
        parent = _model_at(loc[:-1], root, skip)
        close = did_you_mean(str(loc[-1]), list(parent.model_fields)) if parent else ""
        if close:
            close = close.replace("'", "'" + "".join(f"{p}." for p in loc[:-1]), 1)
        return key, f"unknown key '{key}'{close}"
    if typ == "missing":
        return key, f"missing required key '{key}'"
    got = err.get("input")
    if typ in _TYPE_WORDS and _TYPE_WORDS[typ]:
        return key, f"'{key}' must be {_TYPE_WORDS[typ]}, got {got!r}"
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    if typ == "value_error":
        return key, f"'{key}': {msg}" if key else msg
    return key, f"'{key}': {msg}, got {got!r}" if key else msg


def _messages(errors: list[dict], source: str, model: Any = Config, prefix: tuple = ()) -> list[str]:
    by_key: dict[str, list[str]] = {}
    for err in errors:
        key, msg = _format_error({**err, "loc": prefix + tuple(err["loc"])}, source, model, len(prefix))
        by_key.setdefault(key, []).append(msg)
    return [msgs[0] if len(msgs) == 1 else f"'{key}' is not valid: " + " or ".join(
        m.split(": ", 1)[-1] for m in msgs) for key, msgs in by_key.items()]


def _check_params(cfg: Config, source: str) -> None:
    """``model.params`` and ``train.loss_params`` against the network's / loss's typed parameters."""
    problems = []
    for kind, name, path in (("model", cfg.model.name, ("model", "params")),
                             ("loss", cfg.train.loss, ("train", "loss_params"))):
        params = cfg.model.params if kind == "model" else cfg.train.loss_params
        typed = known(kind)[name]
        try:
            checked = typed.model_validate(params).model_dump(exclude_unset=True)
        except ValidationError as e:
            msgs = _messages(e.errors(), source, typed, path)
            problems += [f"{m} (parameters of {'network' if kind == 'model' else 'loss'} '{name}')" for m in msgs]
            continue
        if kind == "model":
            cfg.model.params = {**params, **checked}
        else:
            cfg.train.loss_params = {**params, **checked}
    if problems:
        raise MedsegError(f"{source}: " + "; ".join(problems))


def validate_config(raw: dict, source: str = "config") -> Config:
    """Validate a dict; a problem raises MedsegError naming each wrong key (once)."""
    if not isinstance(raw, dict):
        raise MedsegError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise MedsegError(f"{source}: " + "; ".join(_messages(e.errors(), source))) from None
    _check_params(cfg, source)
    return cfg


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines). A Python tag
    (``!!python/object/apply:...``) is refused by the safe loader before anything runs, which it says."""
    problem = getattr(e, "problem", None) or next((line for line in str(e).splitlines() if line.strip()), "")
    mark = getattr(e, "problem_mark", None)
    text = problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")
    if "python/" in problem:
        text += "; a config is plain YAML, and Python tags are refused without running them: remove the tag"
    return text


def apply_override(raw: dict, item: str, source: str = "--set") -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``3``, ``[1,2]``, ``true``)."""
    if "=" not in item:
        raise MedsegError(f"{source}: override {item!r} must look like key.sub=value")
    key, value = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise MedsegError(f"{source}: override {item!r} has an empty key")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise MedsegError(f"{source}: cannot parse the value of {key!r}: {yaml_problem(e)}") from None


def _resolve_paths(raw: dict, base: Path) -> None:
    data = raw.get("data")
    if isinstance(data, dict):
        sections = [data] + [d for d in (data.get("domains") or {}).values() if isinstance(d, dict)] \
            if isinstance(data.get("domains") or {}, dict) else [data]
        for sec in sections:
            for k in ("root", "cache_dir", "splits_file"):
                if isinstance(sec.get(k), str):
                    p = Path(sec[k]).expanduser()
                    sec[k] = str(p if p.is_absolute() else (base / p).resolve())


def load_config(path: str | Path | dict | Config, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config.

    ``path`` may be a YAML file, an already-parsed dict (paths relative to the current folder) or a Config.
    """
    if isinstance(path, Config):
        raw = path.model_dump()
        source, base = "config", Path.cwd()
    elif isinstance(path, dict):
        raw, source, base = copy.deepcopy(path), "config", Path.cwd()
    else:
        p = Path(path)
        source, base = str(p), p.resolve().parent
        if not p.is_file():
            raise MedsegError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise MedsegError(f"{p}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise MedsegError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    _resolve_paths(raw, base)
    for item in overrides or []:
        apply_override(raw, item)
    _resolve_paths(raw, Path.cwd())
    return validate_config(raw, source)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what run folders and checkpoints record)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

"""A plan as a commented config YAML and as a table.

:func:`write_plan` writes an ordinary config file that :func:`medseg3d.config.load_config` validates, where
each planned line carries the number behind it as a comment::

    preprocess:
      spacing: [2.0, 2.0, 2.0]          # median spacing of 6 cases

Planned values for keys the config schema does not have yet (``plan.extras``, e.g. ``train.threads``) are
written as keys when the schema accepts them and otherwise as comments in their section, so the file always
validates. :func:`format_decisions` returns the decisions as a text table (decision, value, because).
"""

from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path
from typing import Any

import yaml

from ..errors import MedsegError
from ..io.scan import atomic_write
from .planner import Plan

_COMMENT_COLUMN = 40


def _scalar(v: Any) -> str:
    """A value in YAML flow style, on one line."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000, sort_keys=False).strip()
    lines = [ln for ln in text.splitlines() if ln.strip() != "..."]
    return " ".join(lines)


def _comment(text: str) -> str:
    return " ".join(str(text).split())


def _set(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def _accepted_extras(plan: Plan) -> dict[str, Any]:
    """The extras today's schema accepts (each tried alone on the planned config)."""
    from ..config import validate_config

    out = {}
    for key, value in plan.extras.items():
        raw = copy.deepcopy(plan.config)
        _set(raw, key, value)
        if key == "preprocess.normalize":  # its statistics travel with it
            for k2, v2 in plan.extras.items():
                if k2.startswith("preprocess.") and k2 != key:
                    _set(raw, k2, v2)
        try:
            validate_config(raw)
        except MedsegError:
            continue
        out[key] = value
    return out


def plan_yaml(plan: Plan, path: str | Path | None = None) -> str:
    """The commented YAML text of a plan; with ``path``, ``data.root`` is written relative to its folder."""
    cfg = copy.deepcopy(plan.config)
    accepted = _accepted_extras(plan)
    for key, value in accepted.items():
        _set(cfg, key, value)
    if path is not None and cfg.get("data", {}).get("root"):
        root = Path(cfg["data"]["root"]).resolve()
        try:
            cfg["data"]["root"] = os.path.relpath(root, Path(path).resolve().parent)
        except ValueError:  # another drive
            cfg["data"]["root"] = str(root)
    because = {d.key: d.because for d in plan.decisions if d.key}
    pending = {k: v for k, v in plan.extras.items() if k not in accepted}
    est = plan.estimate
    budget = f"a budget of {plan.budget_s:.0f} s" if plan.budget_s is not None else "no budget (quality)"
    lines = [f"# Planned by medseg3d for {budget} on {plan.device}; estimated {est.get('total', 0):.0f} s in all "
             f"(training {est.get('training', 0):.0f} s).",
             "# Each planned value's comment gives the number behind it; `medseg3d check-config FILE` validates it."]

    def emit(node: dict, prefix: str, indent: int) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if v is None:
                continue
            pad = "  " * indent
            note = because.get(key)
            if isinstance(v, dict) and v:
                head = f"{pad}{k}:"
                lines.append(head + (" " * max(1, _COMMENT_COLUMN - len(head)) + f"# {_comment(note)}"
                                     if note else ""))
                emit(v, key + ".", indent + 1)
            else:
                text = f"{pad}{k}: {_scalar(v)}"
                lines.append(text + (" " * max(1, _COMMENT_COLUMN - len(text)) + f"# {_comment(note)}"
                                     if note else ""))
        section = prefix[:-1]
        for pk, pv in pending.items():
            if pk.rsplit(".", 1)[0] == section:
                pad = "  " * indent
                why = because.get(pk)
                lines.append(f"{pad}# planned, not yet a config key: {pk.rsplit('.', 1)[1]}: {_scalar(pv)}"
                             + (f"   ({_comment(why)})" if why else ""))

    emit(cfg, "", 0)
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write the plan as a commented config YAML (validated with load_config before it is renamed into
    place, so an invalid or partial file never appears)."""
    from ..config import load_config

    path = Path(path)
    if path.exists() and path.is_dir():
        raise MedsegError(f"{path}: is a folder; give the config file to write, e.g. {path / 'plan.yaml'}")
    text = plan_yaml(plan, path)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)
        load_config(tmp)

    return atomic_write(path, write)


def format_decisions(plan: Plan, width: int = 110) -> str:
    """The decisions as a text table: decision, value, because."""
    rows = [(d.name, _scalar(d.value) if not isinstance(d.value, str) else d.value, _comment(d.because))
            for d in plan.decisions]
    w1 = max(len("decision"), *(len(r[0]) for r in rows))
    w2 = min(28, max(len("value"), *(len(r[1]) for r in rows)))
    w3 = max(30, width - w1 - w2 - 6)
    out = [f"{'decision':<{w1}}  {'value':<{w2}}  because", f"{'-' * w1}  {'-' * w2}  {'-' * w3}"]
    for name, value, why in rows:
        wrapped = textwrap.wrap(why, w3) or [""]
        vals = textwrap.wrap(value, w2) or [""]
        for i in range(max(len(wrapped), len(vals))):
            out.append(f"{name if i == 0 else '':<{w1}}  {vals[i] if i < len(vals) else '':<{w2}}  "
                       f"{wrapped[i] if i < len(wrapped) else ''}".rstrip())
    return "\n".join(out)

"""The model contract: what a trained model is, known in this one module.

A trained model is its resolved config, the meaning of its inputs and outputs (a :class:`Head` per domain:
channel names, label names and values, and the regions for sigmoid outputs), the spatial axes test-time
augmentation may mirror (those training mirrored), and its weights. Training writes it into every checkpoint;
``infer``, the Segmenter, ``export`` and validation read it back through :func:`medseg3d.bundle.load_model`,
whatever the file: a checkpoint (``.pt``, loaded with ``weights_only=True``), an exported ONNX file or an
exported TorchScript file (both carry the same contract as JSON metadata).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..config import Config, validate_config
from ..errors import MedsegError
from .network import build_network

FORMAT = "medseg3d-checkpoint"
VERSION = 3  # 1: no mirror axes, no checksum; 2: u2net3d and unetpp had other defaults (both still read)
REWRITE = "the file is damaged or was not written by medseg3d, so write it again (medseg3d train, or export)"


@dataclass(frozen=True)
class Head:
    """What one (domain's) network means: its input channels and its outputs (labels, or sigmoid regions)."""

    channels: list[str]
    labels: dict[str, int]
    regions: Optional[dict[str, list[int]]] = None
    domain: Optional[str] = None

    @property
    def n_out(self) -> int:
        return len(self.regions) if self.regions else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "labels": dict(self.labels),
                "regions": {k: list(v) for k, v in self.regions.items()} if self.regions else None}


def training_mirror_axes(cfg: Config) -> tuple[int, ...]:
    """The axes of the preprocessed volume that training mirrored (so TTA may): every axis of a 3D patch, the
    two in-plane axes of a 2D/2.5D model (mirroring the slice axis would reverse the order of its context
    channels, which training never shows); none when training did not mirror."""
    if cfg.train.augment.flip_prob <= 0:
        return ()
    if cfg.model.spatial_dims == 2 and isinstance(cfg.model.slice_axis, int):
        return tuple(a for a in range(3) if a != cfg.model.slice_axis)
    return (0, 1, 2)


def weights_checksum(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the parameter names and their raw bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k]
        h.update(k.encode())
        if isinstance(t, torch.Tensor):
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weights_mismatch(expected: dict[str, torch.Tensor], given: dict[str, Any]) -> str:
    """How a state dict ``given`` differs from a network's ``expected`` one, in a few words (empty if it fits)."""
    shape = lambda t: list(getattr(t, "shape", []))  # noqa: E731
    other = [k for k in expected if k in given and shape(given[k]) != shape(expected[k])]
    missing = [k for k in expected if k not in given]
    unknown = [k for k in given if k not in expected]
    parts = []
    if other:
        parts.append(f"{len(other)} tensor(s) of other shapes, e.g. '{other[0]}' is {shape(given[other[0]])} in the "
                     f"file but {shape(expected[other[0]])} in the network")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. '{missing[0]}'")
    if unknown:
        parts.append(f"{len(unknown)} the network does not have, e.g. '{unknown[0]}'")
    return "; ".join(parts)


@dataclass
class ModelContract:
    """A trained model: config, heads (``""`` for a single-domain model, else one per domain), mirror axes
    and weights (or, for an exported file, the runnable graph in ``module``)."""

    config: Config
    heads: dict[str, Head]
    mirror_axes: tuple[int, ...]
    weights: Optional[dict[str, torch.Tensor]] = None
    module: Optional[nn.Module] = None  # an exported graph (ONNX Runtime session, TorchScript) instead of weights
    source: str = "model"
    version: int = VERSION
    exported_domain: Optional[str] = None  # the domain an exported graph was made for
    extra: dict[str, Any] = field(default_factory=dict)  # training state that travels in a checkpoint

    # ---- heads and networks -----------------------------------------------------------------------------------
    @property
    def domains(self) -> list[str] | None:
        return None if list(self.heads) == [""] else list(self.heads)

    def head(self, domain: str | None = None) -> Head:
        """The head of ``domain`` (default: a single-domain model's only head, or the first domain)."""
        if self.domains is None:
            if domain is not None and domain != self.exported_domain:
                raise MedsegError(f"{self.source}: --domain {domain!r} given but the model has no domains"
                                  if self.exported_domain is None else
                                  f"{self.source}: exported for domain '{self.exported_domain}', not '{domain}'")
            return self.heads[""]
        name = domain or self.domains[0]
        if name not in self.heads:
            raise MedsegError(f"{self.source}: unknown domain '{name}'; the model has {', '.join(self.domains)}")
        h = self.heads[name]
        return Head(h.channels, h.labels, h.regions, name)

    def build(self, domain: str | None = None) -> tuple[nn.Module, Head]:
        """The runnable network (weights loaded, eval mode) and the head of ``domain``."""
        head = self.head(domain)
        if self.module is not None:
            return self.module, head
        if self.domains is None:
            n_in, n_out = len(head.channels), head.n_out
        else:
            n_in = {d: len(h.channels) for d, h in self.heads.items()}
            n_out = {d: h.n_out for d, h in self.heads.items()}
        net = build_network(self.config, n_in, n_out)
        try:
            net.load_state_dict(self.weights)
        except RuntimeError as e:
            raise MedsegError(f"{self.source}: its weights do not fit network '{self.config.model.name}' as its "
                              f"config builds it ({weights_mismatch(net.state_dict(), self.weights) or e}); the "
                              f"weights and the config come from different models: use the checkpoint as training "
                              f"wrote it") from None
        return net.eval(), head

    # ---- serialisation ------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """Everything but the weights, as plain JSON-able data."""
        out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": self.config.model_dump(mode="json"),
                               "mirror_axes": list(self.mirror_axes)}
        if self.domains is None:
            out.update(self.heads[""].to_dict())
        else:
            first = self.heads[self.domains[0]]
            out.update(first.to_dict())  # (a version-1 reader's view: the first domain)
            out["domains"] = {d: h.to_dict() for d, h in self.heads.items()}
        return out

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict a checkpoint file holds: the contract, the weights and their checksum, and ``extra``."""
        if self.weights is None:
            raise MedsegError(f"{self.source}: an exported model has no weights to write as a checkpoint")
        return {**self.extra, **self.meta(), "model": self.weights, "weights_sha256": weights_checksum(self.weights)}


def contract_from_meta(meta: Any, source: str, weights: dict | None = None, module: nn.Module | None = None,
                       extra: dict | None = None) -> ModelContract:
    """Read a contract from a checkpoint dict or exported metadata (format version 1 or 2); anything malformed is
    one MedsegError naming ``source``."""
    if not isinstance(meta, dict):
        raise MedsegError(f"{source}: its medseg3d metadata is not a mapping; {REWRITE}")
    version = meta.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise MedsegError(f"{source}: written by a newer medseg3d (model format {version}); update medseg3d")
    for key in ("config", "channels", "labels"):
        if key not in meta:
            raise MedsegError(f"{source}: its medseg3d metadata lacks '{key}'; {REWRITE}")
    cfg = validate_config(meta["config"], source=source)
    if version < 3:  # the networks' defaults of the format the file was written in
        from ..models import LEGACY_DEFAULTS

        cfg.model.params = {**LEGACY_DEFAULTS.get(cfg.model.name, {}), **cfg.model.params}

    def head(d: Any, where: str) -> Head:
        ok = (isinstance(d, dict) and isinstance(d.get("channels"), list)
              and all(isinstance(c, str) for c in d["channels"]) and isinstance(d.get("labels"), dict)
              and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                      for k, v in d["labels"].items())
              and (d.get("regions") is None or (isinstance(d["regions"], dict) and all(
                  isinstance(v, list) and all(isinstance(x, int) for x in v) for v in d["regions"].values()))))
        if not ok or not d["channels"] or not d["labels"]:
            raise MedsegError(f"{source}: malformed {where} in its medseg3d metadata (channels must be a list of "
                              f"names, labels a mapping of names to integer values); {REWRITE}")
        return Head(list(d["channels"]), dict(d["labels"]), d.get("regions") or None)

    domains = meta.get("domains")
    if domains:
        if not isinstance(domains, dict):
            raise MedsegError(f"{source}: malformed 'domains' in its medseg3d metadata; {REWRITE}")
        heads = {str(k): head(v, f"domain '{k}'") for k, v in domains.items()}
    else:
        heads = {"": head(meta, "head")}
    axes = meta.get("mirror_axes")
    if axes is None:  # version 1: TTA mirrored every axis; a 2D model's slice axis is left out now
        axes = (0, 1, 2)
        if cfg.model.spatial_dims == 2 and isinstance(cfg.model.slice_axis, int):
            axes = tuple(a for a in range(3) if a != cfg.model.slice_axis)
    if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and 0 <= a <= 2 for a in axes):
        raise MedsegError(f"{source}: malformed 'mirror_axes' in its medseg3d metadata; {REWRITE}")
    exported = meta.get("domain")
    return ModelContract(cfg, heads, tuple(axes), weights, module, source, int(version),
                         exported if isinstance(exported, str) else None, dict(extra or {}))


def meta_json(contract: ModelContract, domain: str | None = None) -> str:
    """The metadata an exported file carries: the contract of one domain's sub-network."""
    head = contract.head(domain)
    meta = {**contract.meta(), **head.to_dict(), "domain": head.domain}
    meta.pop("domains", None)
    return json.dumps(meta)

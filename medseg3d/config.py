"""The run configuration: YAML validated by pydantic schemas that forbid unknown keys.

``load_config(path, overrides)`` reads a YAML file, applies ``a.b=value`` overrides (values parsed as YAML),
resolves relative paths written in the file against the file's folder (paths given in overrides against the
current folder), and validates. Every error names the key; an unknown key also names the closest valid one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import MedsegError
from .registry import did_you_mean

LayerSpec = Union[str, list, None]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    root: str = Field(description="dataset folder (MSD or nnU-Net v2 raw layout)")
    layout: Literal["auto", "msd", "nnunet"] = "auto"
    dataset_json: str = "dataset.json"
    channels: Optional[list[str]] = Field(None, description="channel names in input order; default: dataset.json")
    labels: Optional[dict[str, int]] = Field(
        None, description="class name -> label value in the files, background first; default: dataset.json")
    num_folds: int = Field(5, ge=2)
    fold: Union[int, Literal["all"]] = Field(0, description="validation fold, or 'all' to train on every case")
    splits_file: Optional[str] = Field(None, description="JSON list of {'train': [ids], 'val': [ids]} per fold")
    cache_dir: Optional[str] = Field(None, description="where preprocessed cases are cached; default ~/.cache/medseg3d")

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None:
            if len(set(v.values())) != len(v):
                raise ValueError("label values must be distinct")
            if 0 not in v.values():
                raise ValueError("one label must have the value 0 (background)")
        return v


class PreprocessConfig(_Strict):
    orientation: str = Field("RAS", description="axis codes every case is reoriented to")
    spacing: Optional[list[float]] = Field(None, description="target voxel spacing in mm; null keeps each case's")
    crop_foreground: bool = Field(True, description="crop to the bounding box of nonzero voxels")
    normalize: Literal["zscore_nonzero", "zscore", "none"] = "zscore_nonzero"

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str):
        v = v.upper()
        if len(v) != 3 or sorted(set(v) & set("LR")) == [] or not all(
                sum(c in pair for c in v) == 1 for pair in ("LR", "AP", "SI")):
            raise ValueError(f"must be three axis codes like 'RAS' or 'LPS', got {v!r}")
        return v

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v):
        if v is not None and (len(v) != 3 or any(s <= 0 for s in v)):
            raise ValueError("must be three positive numbers (mm)")
        return v


class ModelConfig(_Strict):
    name: str = "unet"
    spatial_dims: Literal[2, 3] = 3
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the network")
    # 2D models on volumes (medseg3d/data/slices.py): ignored when spatial_dims is 3
    slice_axis: Union[Literal["auto"], Annotated[int, Field(ge=0, le=2)]] = Field(
        "auto", description="spatial_dims 2: the axis of the preprocessed volume that slices are cut across, or "
                            "'auto' (the coarsest axis of preprocess.spacing, else of the dataset's median spacing)")
    context_slices: int = Field(0, ge=0, description="spatial_dims 2 (2.5D): neighbouring slices on each side "
                                                     "fed as extra input channels")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str):
        from .models import MODELS

        if v not in MODELS:
            raise ValueError(f"unknown model '{v}'{did_you_mean(v, MODELS.names())}; valid: {', '.join(MODELS.names())}")
        return v


class AugmentConfig(_Strict):
    flip_prob: float = Field(0.5, ge=0, le=1, description="mirroring, per axis")
    rotate_prob: float = Field(0.0, ge=0, le=1)
    rotate_range: float = Field(0.52, ge=0, description="radians, each axis (0.52 ≈ 30°)")
    scale_prob: float = Field(0.0, ge=0, le=1)
    scale_range: float = Field(0.15, ge=0, description="zoom 1±range")
    intensity_prob: float = Field(0.15, ge=0, le=1, description="random intensity scale and shift")
    gamma_prob: float = Field(0.0, ge=0, le=1)
    noise_prob: float = Field(0.1, ge=0, le=1)


class TrainConfig(_Strict):
    patch_size: list[int] = Field(default_factory=lambda: [64, 64, 64])
    batch_size: int = Field(2, ge=1)
    epochs: int = Field(50, ge=1)
    iters_per_epoch: int = Field(250, ge=1)
    budget: Optional[str] = Field(None, description="wall-clock limit, e.g. '90s', '10m', '2h'")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD only")
    scheduler: Literal["none", "poly", "cosine"] = "poly"
    poly_power: float = 0.9
    loss: str = "dice_ce"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    fg_oversample: float = Field(0.33, ge=0, le=1, description="share of patches centred on foreground")
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    grad_clip: Optional[float] = Field(12.0, gt=0)
    amp: bool = Field(True, description="mixed precision on CUDA")
    num_workers: int = Field(0, ge=0)
    device: str = "auto"
    seed: int = 0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str):
        from .engine import losses  # noqa: F401  (registers)
        from .registry import LOSSES

        if v not in LOSSES:
            raise ValueError(f"unknown loss '{v}'{did_you_mean(v, LOSSES.names())}; valid: {', '.join(LOSSES.names())}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v):
        if v is not None:
            parse_duration(v)
        return v


class InferConfig(_Strict):
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"


class RelabelConfig(_Strict):
    source: str = Field("enhancing", description="class whose whole volume is checked")
    target: str = Field("necrotic", description="class its voxels become")
    below_ml: float = Field(gt=0, description="relabel when the source class is smaller than this (ml)")


class PostprocessConfig(_Strict):
    """Applied to the label map on the scan's own grid, in this order; everything is off by default."""

    min_component_ml: float = Field(0.0, ge=0, description="remove connected components smaller than this (ml)")
    largest_component: bool = Field(False, description="keep only the largest connected component of each class")
    fill_holes: bool = Field(False, description="background enclosed by a class becomes that class")
    relabel: Optional[RelabelConfig] = Field(
        None, description="BraTS-style: relabel a class smaller than below_ml, e.g. enhancing -> necrotic")


class Config(_Strict):
    name: str = "run"
    output_dir: str = Field("runs", description="run folders are created inside it")
    data: DataConfig
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    infer: InferConfig = Field(default_factory=InferConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)

    @model_validator(mode="after")
    def _patch_dims(self):
        if self.model.spatial_dims == 2:  # 2D: the in-plane size, or three with 1 along the slice axis
            from .data.slices import check_patch_2d

            check_patch_2d(self.train.patch_size, self.model.slice_axis)
        elif len(self.train.patch_size) != 3 or any(p < 1 for p in self.train.patch_size):
            raise ValueError("train.patch_size must be three positive integers")
        elif self.model.context_slices:
            raise ValueError("model.context_slices needs model.spatial_dims: 2")
        return self


def parse_duration(text: str | int | float) -> float:
    """'90s', '10m', '1.5h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise ValueError(f"not a duration like '90s', '10m' or '2h': {text!r}")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "literal_error": None,
}


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union-member tags (``int``, ``literal['all']``) that follow a leaf key."""
    out: list = []
    model: Any = Config
    for part in loc:
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


def _format_error(err: dict, source: str) -> tuple[str, str]:
    loc = _clean_loc(tuple(err["loc"]))
    key = ".".join(str(p) for p in loc)
    typ = err["type"]
    if typ == "extra_forbidden":
        parent = _model_at(loc[:-1])
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


def validate_config(raw: dict, source: str = "config") -> Config:
    """Validate a dict; a problem raises MedsegError naming each wrong key (once)."""
    if not isinstance(raw, dict):
        raise MedsegError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        by_key: dict[str, list[str]] = {}
        for err in e.errors():
            key, msg = _format_error(err, source)
            by_key.setdefault(key, []).append(msg)
        parts = [msgs[0] if len(msgs) == 1 else f"'{key}' is not valid: " + " or ".join(
            m.split(": ", 1)[-1] for m in msgs) for key, msgs in by_key.items()]
        raise MedsegError(f"{source}: " + "; ".join(parts)) from None


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
        raise MedsegError(f"{source}: cannot parse the value of {key!r}: {e}") from None


def _resolve_paths(raw: dict, base: Path) -> None:
    data = raw.get("data")
    if isinstance(data, dict):
        for k in ("root", "cache_dir", "splits_file"):
            if isinstance(data.get(k), str):
                p = Path(data[k]).expanduser()
                data[k] = str(p if p.is_absolute() else (base / p).resolve())


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
            raise MedsegError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise MedsegError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}")
    _resolve_paths(raw, base)
    for item in overrides or []:
        apply_override(raw, item)
    _resolve_paths(raw, Path.cwd())
    return validate_config(raw, source)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

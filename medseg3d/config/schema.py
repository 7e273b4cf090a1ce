"""The run configuration's schema: pydantic models that forbid unknown keys. This layer imports neither torch
nor MONAI (checking a YAML file is instant); the networks' and losses' own parameters are typed in
:mod:`medseg3d.config.params`, the label conventions in :mod:`medseg3d.config.labels`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..registry import did_you_mean
from .labels import brats_labels, brats_regions, region_write_values
from .params import LOSS_PARAMS, NETWORK_PARAMS


def _known_name(kind: str, name: str, table: dict) -> str:
    """``name`` if it is a registered network/loss, else the same error the registries give."""
    if name not in table:
        raise ValueError(f"unknown {kind} '{name}'{did_you_mean(name, table)}; valid: {', '.join(sorted(table))}")
    return name


def check_patch_2d(patch: Sequence[int], slice_axis: int | str) -> None:
    """Validate ``train.patch_size`` for a 2D model (raises ValueError, which the config reports)."""
    if any(p < 1 for p in patch) or len(patch) not in (2, 3):
        raise ValueError("train.patch_size must be two positive integers (the slice size) for model.spatial_dims 2, "
                         "or three with 1 along model.slice_axis")
    if len(patch) == 3:
        if slice_axis == "auto":
            if 1 not in patch:
                raise ValueError("train.patch_size has three numbers but none is 1 (the slice axis); "
                                 "give the two in-plane sizes")
        elif patch[slice_axis] != 1:
            raise ValueError(f"train.patch_size must be 1 along model.slice_axis ({slice_axis}) for a 2D model, "
                             f"got {list(patch)}; or give the two in-plane sizes")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(_Strict):
    """Where one data set lives and what its labels mean (the whole ``data`` section, or one ``data.domains``
    entry of a multi-domain run)."""

    root: Optional[str] = Field(None, description="dataset folder (MSD, nnU-Net v2 raw or BraTS folders)")
    layout: Literal["auto", "msd", "nnunet", "brats"] = "auto"
    dataset_json: str = "dataset.json"
    channels: Optional[list[str]] = Field(None, description="channel names in input order; default: dataset.json")
    labels: Optional[dict[str, int]] = Field(
        None, description="class name -> label value in the files, background first; default: dataset.json")
    brats_labels: Optional[Literal["2018", "2023", "msd"]] = Field(
        None, description="BraTS label convention: '2018' (1/2/4, 2018-2021), '2023' (1/2/3) or 'msd' (Task01: "
                          "1 edema, 2 non-enhancing, 3 enhancing); sets data.labels and lets regions be 'brats'")
    regions: Optional[dict[str, list[int]]] = Field(
        None, description="region name -> label values, in painting order (largest first), e.g. WT [1,2,4], "
                          "TC [1,4], ET [4]; or 'brats' with data.brats_labels. Metrics are reported per region")
    codes: Optional[dict[str, Union[str, dict[str, str]]]] = Field(
        None, description="label name -> its SNOMED CT codes for DICOM-SEG, RTSTRUCT and seg.nrrd: 'SCT:VALUE:MEANING' "
                          "(the type) or {category: ..., type: ...}; BraTS classes and common anatomy are known "
                          "by name")

    @model_validator(mode="before")
    @classmethod
    def _brats(cls, v):
        if not isinstance(v, dict):
            return v
        v = dict(v)
        conv = v.get("brats_labels")
        if isinstance(conv, int) and not isinstance(conv, bool):
            conv = v["brats_labels"] = str(conv)
        if conv in ("2018", "2023", "msd"):
            if v.get("labels") is None:
                v["labels"] = brats_labels(conv)
            if v.get("regions") == "brats":
                v["regions"] = brats_regions(conv)
        elif v.get("regions") == "brats":
            raise ValueError("regions: 'brats' needs data.brats_labels ('2018', '2023' or 'msd')")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v):
        if v is not None:
            if len(set(v.values())) != len(v):
                raise ValueError("label values must be distinct")
            if 0 not in v.values():
                raise ValueError("one label must have the value 0 (background)")
        return v

    @field_validator("regions")
    @classmethod
    def _regions(cls, v):
        if v is not None:
            if not v:
                raise ValueError("regions must name at least one region")
            for name, vals in v.items():
                if not vals or 0 in vals:
                    raise ValueError(f"region '{name}' needs one or more nonzero label values, got {vals}")
            region_write_values(v)
        return v

    @model_validator(mode="after")
    def _regions_in_labels(self):
        if self.regions and self.labels:
            known = set(self.labels.values())
            for name, vals in self.regions.items():
                if not set(vals) <= known:
                    raise ValueError(f"region '{name}' uses label value(s) {sorted(set(vals) - known)} that "
                                     f"data.labels does not have")
        return self


class DataConfig(DataSource):
    target: Literal["labels", "regions"] = Field(
        "labels", description="train on labels (softmax, one class per label) or on data.regions (sigmoid)")
    domains: Optional[dict[str, DataSource]] = Field(
        None, description="multi-domain training (u2net3d): domain name -> its own data section")
    domain_sampling: Literal["random", "round_robin"] = Field(
        "random", description="how the domain of each batch is chosen (seeded)")
    num_folds: int = Field(5, ge=2)
    fold: Union[int, Literal["all"]] = Field(0, description="validation fold, or 'all' to train on every case")
    splits_file: Optional[str] = Field(None, description="JSON list of {'train': [ids], 'val': [ids]} per fold "
                                                         "(nnU-Net's splits_final.json as it is)")
    split_scheme: Literal["medseg3d", "nnunet"] = Field(
        "medseg3d", description="how folds are drawn: 'medseg3d' (seeded by train.seed) or 'nnunet' (nnU-Net v2's "
                                "five folds exactly: KFold with seed 12345 on the sorted case ids)")
    cache_dir: Optional[str] = Field(None, description="where preprocessed cases are cached; default ~/.cache/medseg3d")

    @model_validator(mode="after")
    def _sources(self):
        if self.domains:
            if self.root is not None:
                raise ValueError("give either data.root or data.domains, not both")
            for name, dom in self.domains.items():
                if not name.isidentifier():
                    raise ValueError(f"domain name {name!r} must be an identifier (letters, digits, _)")
                if dom.root is None:
                    raise ValueError(f"data.domains.{name}.root is missing")
                if self.target == "regions" and not dom.regions:
                    raise ValueError(f"data.target is 'regions' but data.domains.{name}.regions is not set")
        else:
            if self.root is None:
                raise ValueError("missing required key 'data.root'")
            if self.target == "regions" and not self.regions:
                raise ValueError("data.target is 'regions' but data.regions is not set")
        return self

    def sources(self) -> dict[str, DataSource]:
        """Domain name -> data source; one unnamed ('') source when there are no domains."""
        return dict(self.domains) if self.domains else {"": self}


class IntensityStats(_Strict):
    lower: float
    upper: float
    mean: float
    std: float = Field(gt=0)


class PreprocessConfig(_Strict):
    orientation: str = Field("RAS", description="axis codes every case is reoriented to")
    spacing: Optional[list[float]] = Field(None, description="target voxel spacing in mm; null keeps each case's")
    crop_foreground: bool = Field(True, description="crop to the bounding box of nonzero voxels")
    normalize: Literal["zscore_nonzero", "zscore", "ct", "none"] = Field(
        "zscore_nonzero", description="per image and channel: z-score inside the nonzero voxels, z-score, or 'ct': "
                                      "clip to the dataset's [lower, upper] and z-score with its mean/std "
                                      "(preprocess.intensity_stats, as nnU-Net's CT normalisation)")
    intensity_stats: Optional[list[IntensityStats]] = Field(
        None, description="normalize 'ct': per channel the dataset's foreground p0.5 (lower), p99.5 (upper), mean "
                          "and std (`medseg3d plan` measures them)")

    @model_validator(mode="after")
    def _ct(self):
        if self.normalize == "ct" and not self.intensity_stats:
            raise ValueError("preprocess.normalize 'ct' needs preprocess.intensity_stats (one {lower, upper, mean, "
                             "std} per channel; `medseg3d plan` writes them)")
        return self

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
        return _known_name("model", v, NETWORK_PARAMS)


class AugmentConfig(_Strict):
    flip_prob: float = Field(0.5, ge=0, le=1, description="mirroring, per axis")
    rotate_prob: float = Field(0.0, ge=0, le=1)
    rotate_range: float = Field(0.52, ge=0, description="radians, each axis (0.52 ≈ 30°)")
    scale_prob: float = Field(0.0, ge=0, le=1)
    scale_range: float = Field(0.15, ge=0, description="zoom 1±range")
    intensity_prob: float = Field(0.15, ge=0, le=1, description="random intensity scale and shift")
    intensity_scale: float = Field(0.1, ge=0, description="intensity scaled by 1±this (per channel)")
    intensity_shift: float = Field(0.1, ge=0, description="intensity shifted by ±this (z-scored units)")
    gamma_prob: float = Field(0.0, ge=0, le=1)
    gamma_range: list[float] = Field(default_factory=lambda: [0.7, 1.5], description="gamma drawn from [lo, hi]")
    elastic_prob: float = Field(0.0, ge=0, le=1, description="MONAI Rand3DElasticd")
    elastic_sigma: list[float] = Field(default_factory=lambda: [5.0, 8.0], description="smoothing, voxels")
    elastic_magnitude: list[float] = Field(default_factory=lambda: [100.0, 200.0], description="offset magnitude")
    noise_prob: float = Field(0.1, ge=0, le=1)
    crop_margin: float = Field(1.25, ge=1, description="spatial augmentation works on a region this many times "
                                                          "the patch, then keeps the central patch")

    @field_validator("gamma_range", "elastic_sigma", "elastic_magnitude")
    @classmethod
    def _range(cls, v):
        if len(v) != 2 or v[0] > v[1] or v[0] < 0:
            raise ValueError(f"must be [low, high] with 0 <= low <= high, got {v}")
        return v


class TrainConfig(_Strict):
    patch_size: list[int] = Field(default_factory=lambda: [64, 64, 64])
    batch_size: int = Field(2, ge=1)
    epochs: int = Field(50, ge=1)
    iters_per_epoch: int = Field(250, ge=1)
    iterations: Optional[int] = Field(None, ge=1, description="total iterations; when set it replaces epochs "
                                                               "(ceil(iterations / iters_per_epoch) epochs)")
    budget: Optional[str] = Field(None, description="wall-clock limit, e.g. '90s', '10m', '2h'")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1, description="SGD only")
    scheduler: Literal["none", "poly", "cosine"] = "poly"
    poly_power: float = 0.9
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up from 0 (epochs, may be a fraction)")
    loss: str = "dice_ce"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    fg_oversample: float = Field(0.33, ge=0, le=1, description="share of patches centred on foreground")
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    grad_clip: Optional[float] = Field(12.0, gt=0)
    amp: bool = Field(True, description="mixed precision on CUDA")
    num_workers: Optional[int] = Field(None, ge=0, description="DataLoader worker processes that augment while "
                                       "the step runs (null: none on a CPU, where the step uses the cores; "
                                       "min(free cores - 1, 12) on a GPU)")
    threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads (null: torch's default; "
                                                          "`medseg3d plan` measures the fastest)")
    device: str = "auto"
    seed: int = 0
    tensorboard: bool = Field(True, description="also log to RUN/tensorboard")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str):
        return _known_name("loss", v, LOSS_PARAMS)

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):  # a number is seconds
            v = f"{float(v):f}".rstrip("0").rstrip(".")
        if v is not None and parse_duration(v) <= 0:  # (defined below, used at validation time)
            raise ValueError(f"must be a positive duration, got {v!r}")
        return v


class InferConfig(_Strict):
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    window_size: Optional[list[int]] = Field(
        None, description="sliding-window size (3D; a multiple of the network's divisor); default train.patch_size. "
                          "`medseg3d plan` proposes a larger one where that is faster")
    engine: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto", description="what runs the windows: 'auto' measures the engines on the first window and keeps the "
                            "fastest whose labels agree with PyTorch fp32 (cached per machine and network)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 only where measured faster and "
                                                                          "agreeing with fp32")
    threads: Optional[int] = Field(None, ge=1, description="intra-op threads of the engine (null: measured)")
    skip_empty: bool = Field(True, description="windows whose input is all zero reuse one computed output (exact)")

    @field_validator("window_size")
    @classmethod
    def _window(cls, v):
        if v is not None and (len(v) != 3 or any(s < 1 for s in v)):
            raise ValueError("must be three positive integers")
        return v


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
            check_patch_2d(self.train.patch_size, self.model.slice_axis)
        elif len(self.train.patch_size) != 3 or any(p < 1 for p in self.train.patch_size):
            raise ValueError(f"train.patch_size must be three positive integers (voxels per axis, e.g. [64, 64, 64]), "
                             f"got {list(self.train.patch_size)}")
        elif self.model.context_slices:
            raise ValueError("model.context_slices needs model.spatial_dims: 2")
        if self.data.domains and self.model.name != "u2net3d":
            raise ValueError(f"data.domains needs a multi-domain model (u2net3d), not '{self.model.name}'")
        r, labels = self.postprocess.relabel, self.data.labels
        if r is not None and labels:
            for key in ("source", "target"):
                if getattr(r, key) not in labels:
                    raise ValueError(f"postprocess.relabel.{key} '{getattr(r, key)}' is not one of data.labels "
                                     f"({', '.join(labels)})")
        return self

    @property
    def total_epochs(self) -> int:
        t = self.train
        return -(-t.iterations // t.iters_per_epoch) if t.iterations else t.epochs

    @property
    def total_iterations(self) -> int:
        t = self.train
        return t.iterations if t.iterations else t.epochs * t.iters_per_epoch


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

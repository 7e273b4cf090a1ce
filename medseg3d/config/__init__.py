"""The schema layer: the run configuration (pydantic models, YAML in and out), the networks' and losses' typed
parameters and the label conventions. Imports neither torch nor MONAI."""

from .labels import brats_labels, brats_regions, region_write_values
from .loading import apply_override, dump_config, load_config, validate_config
from .schema import (AugmentConfig, Config, DataConfig, DataSource, InferConfig, ModelConfig, PostprocessConfig,
                     PreprocessConfig, RelabelConfig, TrainConfig, check_patch_2d, parse_duration)

__all__ = ["AugmentConfig", "Config", "DataConfig", "DataSource", "InferConfig", "ModelConfig", "PostprocessConfig",
           "PreprocessConfig", "RelabelConfig", "TrainConfig", "apply_override", "brats_labels", "brats_regions",
           "check_patch_2d", "dump_config", "load_config", "parse_duration", "region_write_values",
           "validate_config"]

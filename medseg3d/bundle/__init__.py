"""The model contract: what a trained model is (config, channels, labels/regions per domain, mirror axes,
weights), written into checkpoints and exported files and read back from any of them, and the network built
from it."""

from .checkpoint import load_model, load_checkpoint, resolve_checkpoint, save_checkpoint
from .contract import FORMAT, VERSION, Head, ModelContract, contract_from_meta, training_mirror_axes
from .network import build_network, model_params

__all__ = ["FORMAT", "VERSION", "Head", "ModelContract", "build_network", "contract_from_meta", "load_model",
           "model_params", "load_checkpoint", "resolve_checkpoint", "save_checkpoint", "training_mirror_axes"]

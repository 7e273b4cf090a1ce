"""Typed keyword arguments of every network (``model.params``) and loss (``train.loss_params``), so a config is
checked completely — an unknown key names the closest valid one and the network it belongs to, a wrong type
names the key and the expected type — before anything is written to disk, without importing torch.

Each model here mirrors its network's constructor (``medseg3d/models``) or loss factory
(``medseg3d/engine/losses.py``); a test checks that names and defaults agree. Fields are optional: only what a
config sets is passed on, the network's own defaults (the papers') apply to the rest.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

# a norm or activation: a name, or [name, {kwargs}] (MONAI's spelling, YAML-friendly), or null
LayerSpec = Union[str, list, tuple, None]
UpMode = Literal["transpose", "linear", "nearest"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UNetParams(_Params):
    base_filters: Optional[int] = Field(None, ge=1, description="2D: 64, 3D: 32")
    depth: Optional[int] = Field(None, ge=1, description="poolings; 2D: 4, 3D: 3")
    norm: LayerSpec = Field("default", description="'default': none in 2D, batch in 3D")
    act: LayerSpec = "relu"
    double_before_pool: Optional[bool] = Field(None, description="3D U-Net doubles channels before pooling")
    up_mode: UpMode = "transpose"
    dropout: float = Field(0.0, ge=0, lt=1)


class VNetParams(_Params):
    variant: Literal["paper", "caffe"] = Field("paper", description="the paper's figure (stages 1,2,3,3,3 / 3,3,2,1)"
                                                                    " or the released Caffe model (1,1,2,3,3 / 3,2,1,1)")
    base_filters: int = Field(16, ge=1)
    encoder_convs: Optional[list[int]] = Field(None, description="default: the variant's")
    decoder_convs: Optional[list[int]] = Field(None, description="default: the variant's")
    kernel_size: int = Field(5, ge=1)
    norm: LayerSpec = None
    act: LayerSpec = "prelu"
    dropout: float = Field(0.0, ge=0, lt=1)


class NoNewNetParams(_Params):
    base_filters: int = Field(30, ge=1)
    depth: int = Field(4, ge=1)
    norm: LayerSpec = ("instance", {"affine": True})
    act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01})
    up_mode: UpMode = "linear"
    deep_supervision: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)


class SegResNetVAEParams(_Params):
    input_image_size: Optional[list[int]] = Field(None, description="taken from train.patch_size")
    base_filters: int = Field(32, ge=1)
    blocks_down: list[int] = Field(default_factory=lambda: [1, 2, 2, 4])
    blocks_up: list[int] = Field(default_factory=lambda: [1, 1, 1])
    norm: LayerSpec = ("group", {"num_groups": 8})
    act: LayerSpec = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    vae_latent: int = Field(128, ge=1)
    vae_channels: int = Field(16, ge=1)
    up_mode: UpMode = "linear"


class U2Net3DParams(_Params):
    domains: list[str] = Field(default_factory=lambda: ["default"], description="taken from data.domains")
    base_filters: int = Field(16, ge=1)
    levels: int = Field(6, ge=2, description="the authors' universal model: 6 (16...512)")
    adapter: Literal["separable", "none"] = Field("separable", description="'none': the authors' shared model")
    norm: LayerSpec = ("instance", {"affine": True})
    act: LayerSpec = ("leakyrelu", {"negative_slope": 0.01})
    deep_supervision: bool = True
    side_outputs: Literal["sum", "list"] = Field("sum", description="'sum': side outputs added into the logits, as "
                                                                    "the authors' code")


class UNetPlusPlusParams(_Params):
    base_filters: int = Field(32, ge=1)
    depth: int = Field(4, ge=1)
    unit: Literal["conv_norm_act", "zhou2018"] = Field("conv_norm_act", description="'zhou2018': the authors' "
                                                                                     "units (ELU, dropout 0.5, no norm)")
    norm: LayerSpec = "batch"
    act: LayerSpec = "relu"
    deep_supervision: bool = True
    inference_mode: Literal["accurate", "fast"] = Field("accurate", description="'accurate': the mean of the deep-"
                                                                                 "supervision heads; 'fast': one head")
    inference_depth: Optional[int] = Field(None, ge=1)
    up_mode: UpMode = "transpose"


class MultiResUNetParams(_Params):
    base_filters: int = Field(32, ge=1)
    depth: int = Field(4, ge=1)
    alpha: float = Field(1.67, gt=0)
    norm: LayerSpec = "batch"
    act: LayerSpec = "relu"
    up_mode: UpMode = "transpose"


class FCNParams(_Params):
    variant: Literal["8s", "16s", "32s"] = "8s"
    base_filters: int = Field(64, ge=1)
    fc_channels: Optional[int] = Field(None, ge=1)
    fc_kernel: int = Field(7, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    norm: LayerSpec = None
    learn_final_upsample: bool = False


# registry name (medseg3d.models) -> its parameters
NETWORK_PARAMS: dict[str, type[_Params]] = {
    "unet": UNetParams,
    "vnet": VNetParams,
    "nonewnet": NoNewNetParams,
    "segresnet_vae": SegResNetVAEParams,
    "u2net3d": U2Net3DParams,
    "unetpp": UNetPlusPlusParams,
    "multiresunet": MultiResUNetParams,
    "fcn": FCNParams,
}


class DiceCEParams(_Params):
    lambda_dice: float = Field(1.0, ge=0)
    lambda_ce: float = Field(1.0, ge=0)


class AERegParams(_Params):
    w_l2: float = Field(0.1, ge=0)
    w_kl: float = Field(0.1, ge=0)


# loss name (medseg3d.engine.losses) -> its parameters
LOSS_PARAMS: dict[str, type[_Params]] = {
    "dice_ce": DiceCEParams,
    "dice": _Params,
    "ce": _Params,
    "ae_reg": AERegParams,
}


def known(kind: str) -> dict[str, type[_Params]]:
    """The typed parameters of every network (``"model"``) or loss (``"loss"``), by name."""
    return NETWORK_PARAMS if kind == "model" else LOSS_PARAMS

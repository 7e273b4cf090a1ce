"""model.params and train.loss_params are typed per network and loss: the schema mirrors the constructors
(names and defaults) and reports typos and wrong types before anything runs."""

import inspect

import pytest

from medseg3d.config import load_config
from medseg3d.config.params import LOSS_PARAMS, NETWORK_PARAMS
import medseg3d.models  # noqa: F401  (registers the networks)
from medseg3d.engine import losses  # noqa: F401  (registers the losses)
from medseg3d.errors import MedsegError
from medseg3d.registry import LOSSES, MODELS


def _norm(v):
    if isinstance(v, tuple):
        return [_norm(x) for x in v]
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def _defaults(model):
    out = {}
    for name, f in model.model_fields.items():
        out[name] = f.default_factory() if f.default_factory is not None else f.default
    return _norm(out)


def test_every_network_has_typed_params_matching_its_constructor():
    assert sorted(NETWORK_PARAMS) == MODELS.names()
    for name, model in NETWORK_PARAMS.items():
        sig = inspect.signature(MODELS.get(name).__init__).parameters
        kw = {k: _norm(p.default) for k, p in sig.items() if p.kind == p.KEYWORD_ONLY}
        assert _defaults(model) == kw, name


def test_every_loss_has_typed_params_matching_its_factory():
    assert sorted(LOSS_PARAMS) == LOSSES.names()
    for name, model in LOSS_PARAMS.items():
        sig = inspect.signature(LOSSES.get(name)).parameters
        kw = {k: _norm(p.default) for k, p in sig.items() if k != "multilabel"}
        assert _defaults(model) == kw, name


@pytest.mark.parametrize("override, message", [
    ("model.params.base_filter=8", "unknown key 'model.params.base_filter' (did you mean 'model.params.base_filters'?)"
                                   " (parameters of network 'unet')"),
    ("model.params.depth=deep", "'model.params.depth' must be an integer, got 'deep' (parameters of network 'unet')"),
    ("model.params.up_mode=bilinear", "'model.params.up_mode'"),
    ("train.loss_params.lambda_dic=1", "unknown key 'train.loss_params.lambda_dic' (did you mean "
                                       "'train.loss_params.lambda_dice'?) (parameters of loss 'dice_ce')"),
])
def test_a_wrong_parameter_names_the_key_and_the_network(override, message, tmp_path):
    with pytest.raises(MedsegError) as e:
        load_config("configs/unet3d.yaml", [override, f"output_dir={tmp_path / 'runs'}"])
    assert message in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_params_are_passed_as_written():
    cfg = load_config("configs/brats_nnn.yaml")
    assert cfg.model.params["norm"] == ["instance", {"affine": True}]
    assert "deep_supervision" not in cfg.model.params  # only what the config sets

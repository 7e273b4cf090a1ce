"""The model table (``medseg3d models``): every net and its named variants, parameters and FLOPs."""

from __future__ import annotations

import pytest
import torch

from medseg3d.models import MODELS
from medseg3d.models.summary import format_table, measure, model_table
from medseg3d.models.unetpp import UNetPlusPlus


@pytest.fixture(scope="module")
def table():
    return model_table()


def test_lists_every_registered_model_and_its_variants(table):
    assert [r["name"] for r in table if "variant" not in r] == MODELS.names()
    assert all(not r.get("error") for r in table), [r for r in table if r.get("error")]
    row = {r["name"]: r for r in table if "variant" not in r}
    assert row["u2net3d"]["dims"] == "3D" and row["unetpp"]["dims"] == "2D/3D"
    assert row["unetpp"]["spatial_dims"] == 3 and row["unetpp"]["in_channels"] == 4
    variants = [(r["name"], r["variant"], r["kwargs"]) for r in table if "variant" in r]
    expected = [(n, label, kw) for n in MODELS.names() for label, kw in MODELS.get(n).variants.items()]
    assert variants == expected
    assert ("vnet", "Caffe model", {"variant": "caffe"}) in variants
    for i, r in enumerate(table):  # a variant's row follows its net's
        if "variant" in r:
            assert table[i - 1]["name"] == r["name"]
    assert [r for r in model_table(variants=False)] == [r for r in table if "variant" not in r]


def test_parameters_and_flops(table):
    for r in table:
        cls = MODELS.get(r["name"])
        with torch.device("meta"):
            m = cls(r["spatial_dims"], r["in_channels"], r["out_channels"], **r.get("kwargs", {}))
        assert r["parameters"] == sum(p.numel() for p in m.parameters()), r["name"]
        assert r["gflops"] > 0, r["name"]
    smaller = {(r["name"], r.get("variant")): r for r in model_table(size=64)}
    for r in table:
        assert smaller[r["name"], r.get("variant")]["gflops"] < r["gflops"], r["name"]
    vnet = {r.get("variant"): r["parameters"] for r in table if r["name"] == "vnet"}
    assert vnet[None] > vnet["Caffe model"]
    text = format_table(table)
    assert text.count("\n") == len(table) + 1 and all(r["name"] in text for r in table)
    assert "| vnet (Caffe model: variant='caffe') |" in text


def test_filter_and_flop_fallback():
    rows = model_table(2)
    assert {"unetpp", "multiresunet"} <= {r["name"] for r in rows} and "u2net3d" not in {r["name"] for r in rows}
    assert all(r["spatial_dims"] == 2 and r["in_channels"] == 1 and r["out_channels"] == 2 for r in rows)
    with pytest.raises(ValueError, match="spatial_dims_filter"):
        model_table(4)

    class NoMeta(UNetPlusPlus):  # not registered: an op that cannot run on the meta device
        def _forward(self, x, **kw):
            if x.device.type == "meta":
                raise NotImplementedError("no meta kernel")
            return super()._forward(x, **kw)

    def make(sd, cin, cout):
        return NoMeta(sd, cin, cout, base_filters=4, depth=2)

    make.dims = (2, 3)
    r = measure(make, 3, size=64)
    assert r["flops_method"].startswith("cpu")
    ref = measure(lambda sd, i, o: UNetPlusPlus(sd, i, o, base_filters=4, depth=2), 3, size=64)
    assert ref["flops_method"] == "meta" and r["gflops"] == pytest.approx(ref["gflops"], rel=1e-6)

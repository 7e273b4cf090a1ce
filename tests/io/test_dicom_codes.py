"""Segment codes: SNOMED CT category and type per label name (BraTS, common anatomy, lesions), overrides in
every accepted notation, the "Tissue" fallback only for unknown names, one-sentence errors."""

import pytest
from pydicom.sr.codedict import codes as dcm_codes

from medseg3d.errors import MedsegError
from medseg3d.io.codes import (ABNORMAL, ANATOMICAL_STRUCTURE, BODY_SUBSTANCE, TISSUE, default_codes, parse_code,
                               segment_codes)

EXPECTED = {  # label name -> (category, SNOMED CT type code)
    "necrotic": (ABNORMAL, "6574001"), "NCR/NET": (ABNORMAL, "6574001"),
    "necrotic / non-enhancing tumour core": (ABNORMAL, "6574001"), "non-enhancing tumor": (ABNORMAL, "6574001"),
    "edema": (ABNORMAL, "79654002"), "peritumoral oedema": (ABNORMAL, "79654002"), "ED": (ABNORMAL, "79654002"),
    "enhancing": (ABNORMAL, "108369006"), "enhancing tumour": (ABNORMAL, "108369006"), "ET": (ABNORMAL, "108369006"),
    "whole tumour": (ABNORMAL, "108369006"), "WT": (ABNORMAL, "108369006"), "tumor_core": (ABNORMAL, "108369006"),
    "liver": (ANATOMICAL_STRUCTURE, "10200004"), "Liver": (ANATOMICAL_STRUCTURE, "10200004"),
    "kidney_left": (ANATOMICAL_STRUCTURE, "64033007"), "right kidney": (ANATOMICAL_STRUCTURE, "64033007"),
    "spleen": (ANATOMICAL_STRUCTURE, "78961009"), "pancreas": (ANATOMICAL_STRUCTURE, "15776009"),
    "lung_upper_lobe_left": (ANATOMICAL_STRUCTURE, "39607008"), "heart": (ANATOMICAL_STRUCTURE, "80891009"),
    "brain": (ANATOMICAL_STRUCTURE, "12738006"), "grey matter": (ANATOMICAL_STRUCTURE, "389081007"),
    "GM": (ANATOMICAL_STRUCTURE, "389081007"), "white_matter": (ANATOMICAL_STRUCTURE, "389080008"),
    "CSF": (BODY_SUBSTANCE, "65216001"), "bone": (ANATOMICAL_STRUCTURE, "272673000"),
    "liver_tumour": (ABNORMAL, "108369006"), "lesion": (ABNORMAL, "52988006"), "kidney cyst": (ABNORMAL, "367643001"),
    "lung nodules": (ABNORMAL, "27925004"),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_default_codes(name):
    category, type_value = EXPECTED[name]
    got = default_codes(name)
    assert got.known and got.category == category and got.type[0] == "SCT" and got.type[1] == type_value


def test_defaults_agree_with_pydicoms_snomed_dictionary():
    """Every code of the default tables is a SNOMED CT concept of pydicom's codes.SCT with that value."""
    from medseg3d.io import codes as c

    sct = {}
    for key in dir(dcm_codes.SCT):
        code = getattr(dcm_codes.SCT, key, None)
        if hasattr(code, "value"):
            sct.setdefault(code.value, set()).add(code.meaning.lower().split()[0])
    table = [*c._ANATOMY.values(), *c._ABNORMAL.values(), *c._SUBSTANCE.values(), TISSUE, ANATOMICAL_STRUCTURE,
             ABNORMAL, BODY_SUBSTANCE]
    for scheme, value, meaning in table:
        assert scheme == "SCT" and value in sct, (value, meaning)
        assert meaning.lower().split()[0] in sct[value], (value, meaning, sct[value])


@pytest.mark.parametrize("name", ["object", "background", "class_3", "T1"])
def test_unknown_names_fall_back_to_tissue(name):
    got = default_codes(name)
    assert not got.known and got.category == TISSUE and got.type == TISSUE


def test_overrides_in_every_notation():
    names = ["a", "b", "c", "d", "e"]
    got = segment_codes(names, {
        "a": {"category": "SCT:49755003:Morphologically Abnormal Structure", "type": "SCT:4147007:Mass"},
        "b": {"type": "SCT^10200004^Liver"},  # the category follows from the type
        "c": {"type": ["SCT", "78961009", "Spleen"], "category": ("SCT", "91723000", "Anatomical Structure")},
        "d": {"type": dcm_codes.SCT.Kidney},
        "e": "Pancreas",  # a codes.SCT name, type only
    })
    assert got["a"].type == ("SCT", "4147007", "Mass") and got["a"].category == ABNORMAL
    assert got["b"].type == ("SCT", "10200004", "Liver") and got["b"].category == ANATOMICAL_STRUCTURE
    assert got["c"].type[1] == "78961009" and got["c"].category == ANATOMICAL_STRUCTURE
    assert got["d"].type == ("SCT", "64033007", "Kidney")
    assert got["e"].type[1] == "15776009" and got["e"].category == ANATOMICAL_STRUCTURE


def test_bad_codes_are_one_sentence():
    with pytest.raises(MedsegError, match=r"codes\.a\.type: 'not a code' is not a code"):
        segment_codes(["a"], {"a": {"type": "not a code"}})
    with pytest.raises(MedsegError, match="no label named 'x'; the labels are a, b"):
        segment_codes(["a", "b"], {"x": {"type": "Liver"}})
    with pytest.raises(MedsegError, match=r"codes\.a: expected \{category, type\}"):
        segment_codes(["a"], {"a": {"kind": "Liver"}})
    with pytest.raises(MedsegError):
        parse_code(["SCT", "", "Liver"])

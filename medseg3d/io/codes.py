"""Coded meaning of each segment: a SNOMED CT category and type per label name, for DICOM-SEG (Segmented Property
Category/Type), RTSTRUCT (RT ROI Identification Code) and 3D Slicer's terminology tag in ``.seg.nrrd``.

A label name is matched to the defaults case-insensitively, with ``_``/``-``/spaces alike, British or American
spelling (``tumour``/``tumor``, ``oedema``/``edema``) and side words ignored (``kidney_left`` is a kidney).
Lesion words win over organ words (``liver_tumour`` is a neoplasm, not a liver). A name that matches nothing
gets category and type "Tissue" (SCT 85756007), as DICOM-SEG writers commonly do.

A ``codes`` mapping overrides the defaults per label name: ``{"tumour": {"category": "SCT:49755003:Morphologically
Abnormal Structure", "type": "SCT:108369006:Neoplasm"}}``; a code is a ``SCHEME:VALUE:MEANING`` string (``^`` as
in Slicer works too), a ``[scheme, value, meaning]`` triple, a pydicom ``Code``, or the name of a SNOMED CT
concept in pydicom's ``codes.SCT`` dictionary (``"Liver"``). A missing ``category`` is derived from the type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import MedsegError

Code = tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

TISSUE: Code = ("SCT", "85756007", "Tissue")
ANATOMICAL_STRUCTURE: Code = ("SCT", "91723000", "Anatomical Structure")
ABNORMAL: Code = ("SCT", "49755003", "Morphologically Abnormal Structure")
BODY_SUBSTANCE: Code = ("SCT", "91720002", "Body Substance")

# Types (SNOMED CT, the concepts of pydicom's codes.SCT dictionary) -> their segmentation category.
_NEOPLASM: Code = ("SCT", "108369006", "Neoplasm")
_ANATOMY: dict[str, Code] = {
    "liver": ("SCT", "10200004", "Liver"), "kidney": ("SCT", "64033007", "Kidney"),
    "spleen": ("SCT", "78961009", "Spleen"), "pancreas": ("SCT", "15776009", "Pancreas"),
    "lung": ("SCT", "39607008", "Lung"), "heart": ("SCT", "80891009", "Heart"),
    "brain": ("SCT", "12738006", "Brain"), "gray matter": ("SCT", "389081007", "Gray matter"),
    "white matter": ("SCT", "389080008", "White matter"), "bone": ("SCT", "272673000", "Bone"),
    "stomach": ("SCT", "69695003", "Stomach"), "gallbladder": ("SCT", "28231008", "Gallbladder"),
    "esophagus": ("SCT", "32849002", "Esophagus"), "duodenum": ("SCT", "38848004", "Duodenum"),
    "small intestine": ("SCT", "30315005", "Small intestine"), "colon": ("SCT", "71854001", "Colon"),
    "rectum": ("SCT", "34402009", "Rectum"), "urinary bladder": ("SCT", "89837001", "Urinary bladder"),
    "prostate": ("SCT", "41216001", "Prostate"), "uterus": ("SCT", "35039007", "Uterus"),
    "adrenal gland": ("SCT", "23451007", "Adrenal gland"), "aorta": ("SCT", "15825003", "Aorta"),
    "inferior vena cava": ("SCT", "64131007", "Inferior vena cava"), "portal vein": ("SCT", "32764006", "Portal vein"),
    "trachea": ("SCT", "44567001", "Trachea"), "thyroid": ("SCT", "69748006", "Thyroid"),
    "vertebra": ("SCT", "51282000", "Vertebra"), "rib": ("SCT", "113197003", "Rib"),
    "skull": ("SCT", "89546000", "Skull"), "femur": ("SCT", "71341001", "Femur"),
    "humerus": ("SCT", "85050009", "Humerus"), "sacrum": ("SCT", "54735007", "Sacrum"),
    "sternum": ("SCT", "56873002", "Sternum"), "scapula": ("SCT", "79601000", "Scapula"),
    "mandible": ("SCT", "91609006", "Mandible"), "spinal cord": ("SCT", "2748008", "Spinal cord"),
    "muscle": ("SCT", "71616004", "Muscle"), "skin": ("SCT", "39937001", "Skin"),
    "breast": ("SCT", "76752008", "Breast"), "eye": ("SCT", "81745001", "Eye"),
    "optic nerve": ("SCT", "18234004", "Optic nerve"), "larynx": ("SCT", "4596009", "Larynx"),
    "lymph node": ("SCT", "59441001", "Lymph node"), "cerebellum": ("SCT", "113305005", "Cerebellum"),
    "brainstem": ("SCT", "119238007", "Brain stem"), "hippocampus": ("SCT", "5366008", "Hippocampus"),
    "thalamus": ("SCT", "42695009", "Thalamus"), "putamen": ("SCT", "89278009", "Putamen"),
    "caudate nucleus": ("SCT", "11000004", "Caudate nucleus"), "amygdala": ("SCT", "4958002", "Amygdala"),
    "globus pallidus": ("SCT", "14738005", "Globus pallidus"),
    "cerebral cortex": ("SCT", "40146001", "Cerebral cortex"),
    "lateral ventricle": ("SCT", "66720007", "Lateral ventricle"),
    "brain ventricle": ("SCT", "35764002", "Brain ventricle"),
}
_SUBSTANCE: dict[str, Code] = {"cerebrospinal fluid": ("SCT", "65216001", "Cerebrospinal fluid")}
_ABNORMAL: dict[str, Code] = {
    "necrosis": ("SCT", "6574001", "Necrosis"), "edema": ("SCT", "79654002", "Edema"),
    "neoplasm": _NEOPLASM, "lesion": ("SCT", "52988006", "Lesion"), "mass": ("SCT", "4147007", "Mass"),
    "cyst": ("SCT", "367643001", "Cyst"), "nodule": ("SCT", "27925004", "Nodule"),
    "metastasis": ("SCT", "128462008", "Metastasis"), "hemorrhage": ("SCT", "50960005", "Hemorrhage"),
    "carcinoma": ("SCT", "1187425009", "Carcinoma"),
}

# Names (normalised) -> a key of the tables above. BraTS: label 1 is the necrotic / non-enhancing tumour core
# (necrosis), 2 the peritumoral edema, 3/4 the enhancing tumour; its regions (whole tumour, tumour core) are
# neoplasms too. Phrases are tried before single words, so "necrotic tumor core" is necrosis, not a neoplasm.
_SYNONYMS: dict[str, str] = {
    "ncr": "necrosis", "net": "necrosis", "ncr net": "necrosis", "necrotic": "necrosis",
    "necrotic core": "necrosis", "necrotic tumor core": "necrosis", "non enhancing": "necrosis",
    "non enhancing tumor": "necrosis", "non enhancing tumor core": "necrosis", "nonenhancing": "necrosis",
    "necrotic and non enhancing tumor core": "necrosis", "necrotic non enhancing tumor core": "necrosis",
    "ed": "edema", "peritumoral edema": "edema", "snfh": "edema",
    "et": "neoplasm", "enhancing": "neoplasm", "enhancing tumor": "neoplasm", "gd enhancing tumor": "neoplasm",
    "wt": "neoplasm", "whole tumor": "neoplasm", "tc": "neoplasm", "tumor core": "neoplasm",
    "tumor": "neoplasm", "tumour": "neoplasm", "neoplasm": "neoplasm", "cancer": "neoplasm",
    "glioma": "neoplasm", "glioblastoma": "neoplasm", "gtv": "neoplasm",
    "lesions": "lesion", "mets": "metastasis", "metastases": "metastasis", "hemorrhages": "hemorrhage",
    "bleed": "hemorrhage", "haemorrhage": "hemorrhage", "cysts": "cyst", "nodules": "nodule",
    "gm": "gray matter", "grey matter": "gray matter", "cortical gray matter": "gray matter",
    "wm": "white matter", "csf": "cerebrospinal fluid", "kidneys": "kidney", "lungs": "lung",
    "lung lobe": "lung", "lobe lung": "lung", "bones": "bone", "vertebrae": "vertebra", "ribs": "rib",
    "bladder": "urinary bladder", "oesophagus": "esophagus", "ivc": "inferior vena cava",
    "adrenal": "adrenal gland", "brain stem": "brainstem", "ventricles": "brain ventricle",
    "ventricle": "brain ventricle", "thyroid gland": "thyroid", "caudate": "caudate nucleus",
    "pallidum": "globus pallidus", "small bowel": "small intestine", "cortex": "cerebral cortex",
}
_SPELLING = {"tumour": "tumor", "tumours": "tumors", "oedema": "edema", "haemorrhage": "hemorrhage",
             "grey": "gray", "oesophagus": "esophagus", "foetal": "fetal"}
_SIDES = {"left", "right", "l", "r", "lt", "rt", "upper", "lower", "middle", "inferior", "superior", "lobe"}


@dataclass(frozen=True)
class SegmentCodes:
    """The coded category and type of one segment; ``known`` is False for the "Tissue" fallback."""

    category: Code
    type: Code
    known: bool = True


def _normalise(name: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", name.lower().replace("+", " ")).split()
    return " ".join(_SPELLING.get(w, w) for w in words)


def _lookup(key: str) -> SegmentCodes | None:
    key = _SYNONYMS.get(key, key)
    if key in _ABNORMAL:
        return SegmentCodes(ABNORMAL, _ABNORMAL[key])
    if key in _ANATOMY:
        return SegmentCodes(ANATOMICAL_STRUCTURE, _ANATOMY[key])
    if key in _SUBSTANCE:
        return SegmentCodes(BODY_SUBSTANCE, _SUBSTANCE[key])
    return None


def default_codes(name: str) -> SegmentCodes:
    """The default category and type for a label name (see the module docstring), "Tissue" when unknown."""
    norm = _normalise(name)
    found = _lookup(norm)
    if found:
        return found
    words = norm.split()
    core = [w for w in words if w not in _SIDES]
    found = _lookup(" ".join(core)) if core != words else None
    if found:
        return found
    # any run of words, longest first; among equally long runs lesion words win over organ words
    candidates = []
    for size in range(len(words), 0, -1):
        for start in range(len(words) - size + 1):
            hit = _lookup(" ".join(words[start:start + size]))
            if hit:
                candidates.append(hit)
        if candidates:
            return next((c for c in candidates if c.category == ABNORMAL), candidates[0])
    return SegmentCodes(TISSUE, TISSUE, known=False)


def parse_code(spec: Any, where: str = "code") -> Code:
    """A code from ``SCHEME:VALUE:MEANING`` (or ``^``-separated), a triple, a pydicom Code or a codes.SCT name."""
    if hasattr(spec, "scheme_designator") and hasattr(spec, "value"):  # pydicom / highdicom Code
        return (str(spec.scheme_designator), str(spec.value), str(spec.meaning))
    if isinstance(spec, str):
        parts = re.split(r"[\^:]", spec, maxsplit=2) if re.search(r"[\^:]", spec) else []
        if len(parts) == 3 and all(p.strip() for p in parts):
            return tuple(p.strip() for p in parts)  # type: ignore[return-value]
        from pydicom.sr.codedict import codes

        try:
            return parse_code(getattr(codes.SCT, spec.strip().replace(" ", "")), where)
        except AttributeError:
            pass
    elif isinstance(spec, (list, tuple)) and len(spec) == 3 and all(str(p).strip() for p in spec):
        return tuple(str(p).strip() for p in spec)  # type: ignore[return-value]
    raise MedsegError(f"{where}: {spec!r} is not a code; give 'SCHEME:VALUE:MEANING' (e.g. 'SCT:10200004:Liver'), "
                      "a [scheme, value, meaning] triple or a SNOMED CT name from pydicom's codes.SCT")


def segment_codes(names: Iterable[str], codes: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> dict[str, SegmentCodes]:
    """Per label name its :class:`SegmentCodes`: from ``codes`` where given there, else the defaults."""
    names = list(names)
    codes = dict(codes or {})
    unknown = [k for k in codes if k not in names]
    if unknown:
        raise MedsegError(f"codes: no label named {unknown[0]!r}; the labels are {', '.join(names)}")
    out = {}
    for name in names:
        spec = codes.get(name)
        if spec is None:
            out[name] = default_codes(name)
            continue
        if isinstance(spec, str) or not hasattr(spec, "get"):
            spec = {"type": spec}
        extra = set(spec) - {"category", "type"}
        if extra or "type" not in spec:
            raise MedsegError(f"codes.{name}: expected {{category, type}}, got keys {sorted(spec)}")
        type_ = parse_code(spec["type"], f"codes.{name}.type")
        if spec.get("category") is not None:
            category = parse_code(spec["category"], f"codes.{name}.category")
        else:
            category = default_codes(type_[2]).category if default_codes(type_[2]).known else ANATOMICAL_STRUCTURE
        out[name] = SegmentCodes(category, type_)
    return out


def pydicom_code(code: Code):
    """The pydicom ``Code`` of a code triple (highdicom accepts it wherever a coded concept is expected)."""
    from pydicom.sr.coding import Code as PydicomCode

    return PydicomCode(code[1], code[0], code[2])

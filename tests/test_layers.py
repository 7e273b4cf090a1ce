"""The package's layers: each imports only from the layers before it (no cycles), every import counted,
also those inside functions; and the schema layer loads a config without torch or MONAI."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "medseg3d"

# lowest first; a module may import from its own layer and the ones before it
LAYERS = [
    {"errors", "registry", "runtime", "version"},
    {"config"},
    {"io"},
    {"data"},
    {"models"},
    {"bundle"},
    {"inference"},
    {"engine"},
    {"plan"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    """'medseg3d.io.readers' -> 'io'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported medseg3d module, line) for every import in a file."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    module = ".".join(rel.parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = module.rsplit(".__init__", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("medseg3d")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("medseg3d"):
                if target == "medseg3d" or target.count(".") == 0:  # from . import x / from medseg3d import x
                    out += [(f"medseg3d.{a.name}", node.lineno) for a in node.names]
                else:
                    out.append((target, node.lineno))
    return out


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_layer():
    for path in _modules():
        rel = path.relative_to(PKG)
        top = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
        assert top in RANK, f"{rel}: add it to a layer in tests/test_layers.py"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_from_earlier_layers(path):
    rel = path.relative_to(PKG)
    mine = rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]
    bad = []
    for target, line in _imports(path):
        theirs = _top(target)
        if theirs in RANK and RANK[theirs] > RANK[mine]:
            bad.append(f"line {line}: {target} (layer {theirs} is above {mine})")
    assert not bad, f"{rel} imports from a later layer: " + "; ".join(bad)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    """The contract would be empty if the parser missed imports: a known lazy relative import is found."""
    found = dict(_imports(PKG / "cli.py"))
    assert "medseg3d.engine.trainer" in found and "medseg3d.inference.batch" in found


def test_checking_a_config_imports_neither_torch_nor_monai():
    code = ("import sys, medseg3d.config as c; cfg = c.load_config('configs/brats_nnn.yaml', "
            "['model.params.base_filters=8']); assert cfg.model.params['base_filters'] == 8; "
            "print(sorted(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

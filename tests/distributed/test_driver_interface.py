"""The Dask calibration driver uses the calibration walk through its public engine interface
only (fhequant.quantized.calibration.engine), so a refactor of the walk cannot silently break
the distributed path: no private attribute of another object, no private import from another
fhequant package (the quantized and fhe layers), no subclass of the walk's classes."""

from __future__ import annotations

import ast
import pathlib

import fhequant.distributed
from fhequant.quantized.calibration import ModuleCalibrator
from fhequant.quantized.calibration.engine import OutputRange, PassPlan
from fhequant.quantized.calibration.passes import OpPasses
from fhequant.quantized.calibration.store import WalkStore

PACKAGE = pathlib.Path(fhequant.distributed.__file__).parent

#: the walk's classes: the driver composes them, it never subclasses them
WALK_CLASSES = {"ModuleCalibrator", "OpPasses", "WalkStore", "TablePaths", "TensorStore"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _foreign(module: str) -> bool:
    """A fhequant module outside the distributed package."""
    return module.startswith("fhequant.") and not module.startswith("fhequant.distributed")


def violations(source: str, filename: str = "<source>") -> list[str]:
    """Private reaches into other objects and modules found in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{filename}:{node.lineno}: .{node.attr} of {ast.unparse(owner)}")
        elif isinstance(node, ast.ImportFrom) and _foreign(node.module or ""):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{filename}:{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = ast.unparse(base).rsplit(".", 1)[-1]
                if name in WALK_CLASSES:
                    found.append(f"{filename}:{node.lineno}: {node.name} subclasses {name}")
    return found


def test_the_scan_finds_private_reaches() -> None:
    snippet = (
        "from fhequant.quantized.calibration.passes import _helper\n"
        "from fhequant.fhe.run import _rows\n"
        "from fhequant.distributed.merge import _own\n"
        "class Driver(ModuleCalibrator):\n"
        "    def run(self, cal):\n"
        "        self._mine = 1\n"
        "        cal.walker._visit(None)\n"
        "        return cal.store.data._entries\n"
    )
    found = violations(snippet)
    assert len(found) == 5, found
    assert any("_visit" in f for f in found) and any("_entries" in f for f in found)
    assert any("subclasses ModuleCalibrator" in f for f in found)
    assert any("imports _helper" in f for f in found)
    assert any("imports _rows" in f for f in found)
    assert not any("imports _own" in f for f in found)


def test_the_driver_touches_nothing_private() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert {f.name for f in files} >= {"calibration.py", "partitions.py", "merge.py"}
    found = [v for f in files for v in violations(f.read_text(), f.name)]
    assert found == []


def test_the_engine_interface_exists() -> None:
    """The names the driver uses (docs of fhequant.quantized.calibration.engine)."""
    for cls, names in (
        (ModuleCalibrator, ("walk", "accept_inputs")),
        (OpPasses, ("plan", "calibrate_rounding_point", "calibrate_whole", "calibration_qa")),
        (WalkStore, ("stored_blocks", "adopt_blocks", "store_output", "float_block")),
        (OutputRange, ("update", "merge", "finalize", "fold_extremes")),
    ):
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name}"
    assert set(PassPlan.__dataclass_fields__) == {"table", "statistics", "rounding", "releases"}

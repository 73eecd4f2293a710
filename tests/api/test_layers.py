"""The package is layered (see ``fhequant/__init__.py``): no module imports a higher layer.

Two checks:

* static: every ``import fhequant.x`` / ``from fhequant.x import y`` written anywhere in a
  module (top level, function bodies, class bodies, ``if`` blocks) targets the module's own
  layer or a lower one;
* dynamic: importing all the modules of one layer in a fresh interpreter loads no module of a
  higher layer, and none of the optional heavy dependencies (torch, concrete, brevitas).

The package ``__init__`` is the front door: it imports every layer (so that the FHE layer's
registration is in place whatever module a user imports first). The dynamic check therefore
puts a bare ``fhequant`` package in ``sys.modules`` before importing a layer, and measures
what the layer's own modules pull in.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fhequant

PACKAGE_DIR = Path(fhequant.__file__).resolve().parent

#: Layers from the bottom; a module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "fhequant.errors",
            "fhequant.serialization",
            "fhequant._json_checks",
            "fhequant._core",
            "fhequant._concrete",
        ),
    ),
    ("kernels", ("fhequant.kernels",)),
    ("quantization", ("fhequant.quantization",)),
    ("onnx", ("fhequant.onnx",)),
    ("quantized", ("fhequant.quantized",)),
    ("fhe", ("fhequant.fhe",)),
    (
        "front doors",
        (
            "fhequant",
            "fhequant.distributed",
            "fhequant.torch",
            "fhequant.__main__",
            "fhequant.fhe.demo",
            "fhequant.deployment",
            "fhequant.pytest_plugin",
        ),
    ),
)
LAYER_NAMES = [name for name, _ in LAYERS]
HEAVY = ("torch", "concrete", "brevitas")


def layer_of(module: str) -> int:
    """Index in LAYERS of the module's layer (longest prefix wins)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS")
    return best


def package_modules() -> dict[str, Path]:
    """Every Python module of the package, by dotted name."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = package_modules()
#: Import targets that are modules without a .py file (the native extension).
NATIVE = ("fhequant._core",)


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, target module) of every fhequant import written in the module's source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                known = sub in MODULES or sub in NATIVE
                found.append((node.lineno, sub if known else base))
    return [(line, target) for line, target in found if target.split(".")[0] == "fhequant"]


def test_every_module_is_in_a_layer() -> None:
    assert "fhequant.kernels.gemm" in MODULES and "fhequant.fhe.module" in MODULES
    for module in MODULES:
        layer_of(module)


def test_no_import_targets_a_higher_layer() -> None:
    violations = []
    for module, path in MODULES.items():
        own = layer_of(module)
        for line, target in imported_modules(module, path):
            if layer_of(target) > own:
                violations.append(
                    f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: {module} "
                    f"({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[layer_of(target)]})"
                )
    assert not violations, "imports up the layers:\n" + "\n".join(violations)


def test_the_static_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = "def f():\n    from fhequant.fhe.module import run_module\n    import fhequant.onnx\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    targets = [t for _, t in imported_modules("fhequant.kernels.probe", path)]
    assert targets == ["fhequant.fhe.module", "fhequant.onnx"]
    assert [layer_of(t) > layer_of("fhequant.kernels.probe") for t in targets] == [True, True]


_PROBE = textwrap.dedent(
    """
    import importlib, importlib.util, json, sys, types

    spec = importlib.util.find_spec("fhequant")
    bare = types.ModuleType("fhequant")
    bare.__path__ = list(spec.submodule_search_locations)
    sys.modules["fhequant"] = bare  # the front-door __init__ is not run
    for name in json.loads(sys.argv[1]):
        importlib.import_module(name)
    print(json.dumps(sorted(sys.modules)))
    """
)


def _load_in_fresh_interpreter(modules: list[str]) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_DIR.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("layer", range(len(LAYERS) - 1), ids=LAYER_NAMES[:-1])
def test_importing_a_layer_loads_no_higher_layer(layer: int) -> None:
    own = [m for m in MODULES if layer_of(m) == layer]
    assert own
    loaded = _load_in_fresh_interpreter(own)
    assert set(own) <= set(loaded)
    ours = [m for m in loaded if m.startswith("fhequant.")]  # "fhequant" is the bare stand-in
    higher = [m for m in ours if layer_of(m) > layer]
    assert not higher, f"importing the {LAYER_NAMES[layer]} layer loads {higher}"
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"importing the {LAYER_NAMES[layer]} layer loads {heavy[:5]}"


def test_the_whole_package_loads_no_optional_dependency() -> None:
    loaded = _load_in_fresh_interpreter(list(MODULES))
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"importing fhequant loads {heavy[:5]}"


def test_import_fhequant_installs_the_upward_registrations() -> None:
    """What the higher layers register when ``fhequant`` is imported."""
    from fhequant import quantization
    from fhequant.fhe.module import compile_module, module_bitwidth_report, run_module
    from fhequant.quantized import QuantizedGemm, QuantizedModule
    from fhequant.quantized import module as quantized_module

    backend = quantized_module._fhe_backend
    assert backend is not None
    assert backend.compile is compile_module
    assert backend.run is run_module
    assert backend.bitwidth_report is module_bitwidth_report
    assert quantization.QuantizedGemm is QuantizedGemm  # type: ignore[attr-defined]
    assert quantization.QuantizedModule is QuantizedModule  # type: ignore[attr-defined]


def test_without_the_fhe_layer_compile_raises_a_typed_error() -> None:
    probe = textwrap.dedent(
        """
        import importlib.util, sys, types

        spec = importlib.util.find_spec("fhequant")
        bare = types.ModuleType("fhequant")
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules["fhequant"] = bare
        from fhequant.errors import MissingDependencyError
        from fhequant.quantized.module import QuantizedModule

        try:
            QuantizedModule().compile(None)
        except MissingDependencyError as exc:
            print("typed:", exc)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_DIR.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "typed: compile: the FHE layer is not loaded" in done.stdout


#: The most lines a module of the package may have (issue 12: files small enough to read in
#: one sitting).
MAX_MODULE_LINES = 600


def test_no_package_module_is_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(PACKAGE_DIR)): len(path.read_text().splitlines())
        for path in PACKAGE_DIR.rglob("*.py")
    }
    assert sizes, "no module found"
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"split these modules (over {MAX_MODULE_LINES} lines): {over}"

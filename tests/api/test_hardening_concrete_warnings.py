"""concrete's pkg_resources warnings do not reach fhequant users (issue 15).

concrete-python's namespace package calls ``pkg_resources.declare_namespace`` when it is
imported, which warns twice (a UserWarning and a DeprecationWarning). fhequant imports
concrete only through ``fhequant._concrete.fhe_module``, which silences exactly these two
messages. The checks run in fresh processes with every warning shown, since concrete is
imported once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fhequant

_PYTHON_DIR = str(Path(fhequant.__file__).resolve().parents[1])

# load a dumped module and compile it (the compile imports concrete)
_LOAD_AND_RUN = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("always")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    import fhequant

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    x = rng.normal(size=(20, 4)).astype(np.float32)
    text = fhequant.build_quantized_module(model, x, n_bits=3).dumps()
    module = fhequant.QuantizedModule.loads(text)
    module.compile(x)
    from fhequant._concrete import fhe_module
    fhe_module()
    print("done")
    """
)


def _run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PYTHON_DIR, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_load_compile_and_run_show_no_pkg_resources_warning() -> None:
    result = _run(_LOAD_AND_RUN, "-W", "always")
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert "pkg_resources" not in result.stderr
    assert "declare_namespace" not in result.stderr


def test_only_the_pkg_resources_warnings_are_silenced() -> None:
    # a concrete import that warns something else: that warning still shows
    code = textwrap.dedent(
        """
        import sys, types, warnings
        warnings.simplefilter("always")
        fake = types.ModuleType("concrete")
        fhe = types.ModuleType("concrete.fhe")
        fake.fhe = fhe
        sys.modules["concrete"] = fake
        sys.modules["concrete.fhe"] = fhe
        import fhequant._concrete as c
        warnings.warn("pkg_resources is deprecated as an API (a user's own)", UserWarning)
        real_import = __builtins__.__import__
        def noisy(name, *args, **kwargs):
            if name == "concrete":
                warnings.warn("something else from concrete", DeprecationWarning)
                warnings.warn("pkg_resources is deprecated as an API. See", UserWarning)
            return real_import(name, *args, **kwargs)
        __builtins__.__import__ = noisy
        c.fhe_module()
        __builtins__.__import__ = real_import
        print("done")
        """
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "something else from concrete" in result.stderr
    assert result.stderr.count("pkg_resources is deprecated") == 1  # the user's own only

"""FHEModelDev / FHEModelClient / FHEModelServer in one process: artifacts, round trips,
typed errors for damaged or foreign inputs."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fhequant
from deployment_helpers import ROWS, linear_module, save
from fhequant import errors
from fhequant.deployment import FHEModelClient, FHEModelDev, FHEModelServer, wire
from fhequant.deployment.artifacts import DEPLOYMENT_FORMAT_VERSION


@pytest.fixture(scope="module")
def module() -> Any:
    return linear_module()


@pytest.fixture(scope="module")
def artifacts(module: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(module, tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="module")
def client(artifacts: Path) -> FHEModelClient:
    c = FHEModelClient(artifacts)
    c.generate_private_and_evaluation_keys()
    return c


@pytest.fixture(scope="module")
def server(artifacts: Path) -> FHEModelServer:
    return FHEModelServer(artifacts).load()


def _rewrite(src: Path, dst: Path, member: str, edit: Any) -> None:
    """Copy an artifact zip, passing one member's JSON through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == member:
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(name, data)


def test_the_artifacts_hold_what_each_side_needs(artifacts: Path, module: Any) -> None:
    with zipfile.ZipFile(artifacts / "client.zip") as z:
        assert sorted(z.namelist()) == ["client.specs.json", "processing.json"]
        doc = json.loads(z.read("processing.json"))
    assert doc["format"] == "fhequant-deployment-client"
    assert doc["format_version"] == DEPLOYMENT_FORMAT_VERSION
    assert set(doc["versions"]) == {"fhequant", "concrete-python"}
    (spec,) = doc["inputs"]
    max_bits = module.fhe_circuit.graph.maximum_integer_bit_width()
    assert spec["encrypted"] and spec["is_signed"] and spec["shape"] == [1, 4]
    assert 3 <= spec["bit_width"] <= max_bits  # 3-bit inputs, in the circuit's encoding
    # no weights: only quantizers and processing metadata, no layer of the module
    content = doc["processing"]["content"]
    assert sorted(content) == [
        "input_quantizers",
        "onnx_preprocessing",
        "output_quantizers",
        "post_processing_params",
    ]
    text = json.dumps(doc)
    assert "quant_layers_dict" not in text and "QuantizedGemm" not in text
    with zipfile.ZipFile(artifacts / "server.zip") as z:
        assert sorted(z.namelist()) == ["circuit.zip", "server.json"]
        server_doc = json.loads(z.read("server.json"))
        with zipfile.ZipFile(z.open("circuit.zip")) as inner:
            # the compiled library, not concrete's MLIR export (whose configuration is
            # jsonpickle'd)
            assert "sharedlib.so" in inner.namelist()
            assert "configuration.json" not in inner.namelist()
    assert server_doc["cost"]["programmable_bootstrap_count"] == 0
    assert server_doc["cost"]["max_bit_width"] == max_bits
    assert server_doc["fingerprint"] == doc["fingerprint"]


def test_batch_round_trip_gives_the_clear_integers_in_order(
    module: Any, client: FHEModelClient, server: FHEModelServer
) -> None:
    x = ROWS[:7]
    keys = client.get_serialized_evaluation_keys()
    result = server.run(client.quantize_encrypt_serialize(x), keys)
    expected = module.quantized_forward(module.quantize_input(x))
    np.testing.assert_array_equal(client.deserialize_decrypt(result), expected)
    np.testing.assert_array_equal(client.deserialize_decrypt_dequantize(result), module.forward(x))
    # one row at a time gives the same rows
    one = server.run(client.quantize_encrypt_serialize(x[3:4]), keys)
    np.testing.assert_array_equal(client.deserialize_decrypt(one), expected[3:4])


def test_keys_persist_in_key_dir(artifacts: Path, module: Any, tmp_path: Path) -> None:
    first = FHEModelClient(artifacts, key_dir=tmp_path)
    first.generate_private_and_evaluation_keys()
    assert first.key_path is not None and first.key_path.is_file()
    ciphertexts = first.quantize_encrypt_serialize(ROWS[:2])
    result = (
        FHEModelServer(artifacts).load().run(ciphertexts, first.get_serialized_evaluation_keys())
    )
    second = FHEModelClient(artifacts, key_dir=tmp_path)  # loads the same secret key
    expected = module.quantized_forward(module.quantize_input(ROWS[:2]))
    np.testing.assert_array_equal(second.deserialize_decrypt(result), expected)
    third = FHEModelClient(artifacts, key_dir=tmp_path)
    third.generate_private_and_evaluation_keys(force=True)  # new keys: the old result is noise
    assert not np.array_equal(third.deserialize_decrypt(result), expected)


def test_saving_needs_a_compiled_model_and_an_empty_directory(
    tmp_path: Path, artifacts: Path, module: Any
) -> None:
    uncompiled = fhequant.QuantizedModule.loads(module.dumps())
    with pytest.raises(errors.NotCompiledError):
        FHEModelDev(tmp_path / "a", uncompiled).save()
    with pytest.raises(errors.ArtifactError, match="already exist"):
        FHEModelDev(artifacts, module).save()
    with pytest.raises(errors.ArtifactError, match="via_mlir"):
        FHEModelDev(tmp_path / "b", module).save(via_mlir=True)


@pytest.mark.parametrize(
    ("member", "edit", "error", "match"),
    [
        (
            "processing.json",
            lambda d: {**d, "format_version": 99},
            errors.ArtifactVersionError,
            "99",
        ),
        (
            "processing.json",
            lambda d: {**d, "versions": {**d["versions"], "concrete-python": "1.0.0"}},
            errors.ArtifactVersionError,
            "concrete-python 1.0.0",
        ),
        ("processing.json", lambda d: {**d, "format": "other"}, errors.ArtifactError, "other"),
        ("processing.json", lambda d: [], errors.ArtifactError, "document"),
    ],
)
def test_client_artifact_checks(
    artifacts: Path, tmp_path: Path, member: str, edit: Any, error: type, match: str
) -> None:
    _rewrite(artifacts / "client.zip", tmp_path / "client.zip", member, edit)
    with pytest.raises(error, match=match):
        FHEModelClient(tmp_path)


def test_server_artifact_checks(artifacts: Path, tmp_path: Path) -> None:
    _rewrite(
        artifacts / "server.zip",
        tmp_path / "server.zip",
        "server.json",
        lambda d: {**d, "format_version": DEPLOYMENT_FORMAT_VERSION + 1},
    )
    with pytest.raises(errors.ArtifactVersionError):
        FHEModelServer(tmp_path).load()
    damaged = (artifacts / "server.zip").read_bytes()
    (tmp_path / "server.zip").write_bytes(damaged[: len(damaged) // 2])
    with pytest.raises(errors.ArtifactError, match="zip"):
        FHEModelServer(tmp_path).load()
    with zipfile.ZipFile(tmp_path / "server.zip", "w") as z:
        z.writestr("server.json", "{}")
    with pytest.raises(errors.ArtifactError, match=r"circuit\.zip"):
        FHEModelServer(tmp_path).load()
    with pytest.raises(errors.ArtifactError, match="does not exist"):
        FHEModelClient(tmp_path / "nowhere")


def test_bad_ciphertexts_and_keys_are_typed_errors(
    client: FHEModelClient, server: FHEModelServer, tmp_path: Path
) -> None:
    keys = client.get_serialized_evaluation_keys()
    good = client.quantize_encrypt_serialize(ROWS[:2])
    rows = wire.unpack_rows(good)
    bad = {
        "garbage": b"not a ciphertext",
        "truncated": good[:-5],
        "padded": good + b"\0",
        "empty": b"",
        "two values per row": wire.pack_rows([[r[0], r[0]] for r in rows]),
        "damaged value": wire.pack_rows([[b"\0" * 100]]),
    }
    for name, data in bad.items():
        with pytest.raises(errors.CiphertextError):
            server.run(data, keys)
        assert name
    # ciphertexts of another model (other input shape)
    other_dir = save(linear_module(n_in=3, n_out=2, seed=1), tmp_path / "other")
    other = FHEModelClient(other_dir)
    with pytest.raises(errors.CiphertextError, match="do not fit"):
        server.run(other.quantize_encrypt_serialize(ROWS[:1, :3]), keys)
    for data in (b"", b"garbage", keys[:-8]):
        with pytest.raises(errors.EvaluationKeyError):
            server.run(good, data)
    # the server still works
    assert client.deserialize_decrypt(server.run(good, keys)).shape == (2, 3)


def test_client_input_checks(client: FHEModelClient) -> None:
    with pytest.raises(errors.ShapeError, match="rows of shape"):
        client.quantize_encrypt_serialize(ROWS[:2, :3])
    with pytest.raises(errors.ShapeError):
        client.quantize_encrypt_serialize(ROWS[0])
    with pytest.raises(errors.DTypeError):
        client.quantize_encrypt_serialize(ROWS[:2].astype(np.int64))
    with pytest.raises(errors.NonFiniteError):
        client.quantize_encrypt_serialize(np.full((1, 4), np.nan, dtype=np.float32))
    with pytest.raises(errors.GraphInputError):
        client.quantize_encrypt_serialize(ROWS[:1], ROWS[:1])
    with pytest.raises(errors.CiphertextError):
        client.deserialize_decrypt(b"FHQCT")


def test_wire_format_round_trip_and_checks() -> None:
    rows = [[b"a", b"bcd"], [b"", b"ef"]]
    assert wire.unpack_rows(wire.pack_rows(rows)) == rows
    data = wire.pack_rows(rows)
    with pytest.raises(errors.CiphertextError, match="value"):
        wire.unpack_rows(data, values_per_row=3)
    with pytest.raises(errors.CiphertextError, match="version"):
        wire.unpack_rows(data[:5] + bytes([9]) + data[6:])
    header_end = data.index(b"}") + 1
    with pytest.raises(errors.CiphertextError, match="JSON"):
        wire.unpack_rows(data[:10] + b"{" * (header_end - 10) + data[header_end:])
    with pytest.raises(errors.CiphertextError):
        wire.pack_rows([])


def test_no_pickle_in_the_deployment_code() -> None:
    package = Path(fhequant.__file__).resolve().parent / "deployment"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "jsonpickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_a_compiled_module_loads_back_without_recompiling(module: Any, tmp_path: Path) -> None:
    from fhequant.deployment import load_compiled_module, save_compiled_module

    save_compiled_module(module, tmp_path / "saved")
    loaded = load_compiled_module(tmp_path / "saved")
    assert loaded.is_compiled
    x = ROWS[:4]
    np.testing.assert_array_equal(loaded.forward(x, fhe="execute"), module.forward(x))
    np.testing.assert_array_equal(loaded.forward(x), module.forward(x))
    with pytest.raises(errors.NotCompiledError, match="execute"):
        loaded.forward(x, fhe="simulate")
    doc = json.loads((tmp_path / "saved" / "module.json").read_text())
    doc["format_version"] = 0
    (tmp_path / "saved" / "module.json").write_text(json.dumps(doc))
    with pytest.raises(errors.ArtifactVersionError):
        load_compiled_module(tmp_path / "saved")

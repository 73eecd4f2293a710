"""The exception hierarchy and the mapping of native-core errors onto it."""

from __future__ import annotations

import pytest

from fhequant import _core, errors

EXPECTED = {
    "NonFinite": (errors.NonFiniteError, ValueError),
    "Empty": (errors.EmptyTensorError, ValueError),
    "Shape": (errors.ShapeError, ValueError),
    "InvalidArgument": (errors.QuantizationError, ValueError),
    "DType": (errors.DTypeError, TypeError),
    "Overflow": (errors.OverflowRiskError, ValueError),
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_kernel_errors_map_to_named_classes(variant: str) -> None:
    cls, builtin = EXPECTED[variant]
    with pytest.raises(cls) as info:
        _core._raise_kernel_error(variant, "tensor 'x'")
    assert isinstance(info.value, builtin)
    assert isinstance(info.value, errors.FhequantError)
    assert str(info.value).startswith("tensor 'x': ")


def test_unknown_variant_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown kernel error variant"):
        _core._raise_kernel_error("Nope")


def test_every_public_error_is_a_fhequant_error() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FhequantError)

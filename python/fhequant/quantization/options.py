"""QuantizationOptions: bit width, sign, symmetry and QAT flags (docs/contract.md §1.1)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from fhequant.errors import QuantizationError
from fhequant.quantization.domain import MAX_N_BITS, check_n_bits, is_flag, is_n_bits
from fhequant.serialization import Serializable, field

__all__ = ["STABILITY_CONST", "QuantizationOptions", "check_option_conflicts"]

#: Ranges narrower than this (and |rmax| below it) are treated as degenerate
#: (docs/contract.md §1.3).
STABILITY_CONST = 1e-6

#: Immutable types whose attributes a deep copy of the options shares.
_ATOMIC = (bool, int, float, str)


def check_option_conflicts(options: Any, where: str = "QuantizationOptions") -> None:
    """Raise if the options combine flags the quantizer cannot honour.

    Args:
        options: anything with ``is_symmetric``, ``is_signed`` and ``is_qat``.
        where: the object or call named in the message.

    Raises:
        QuantizationError: is_symmetric without is_signed, or is_qat with is_symmetric.
    """
    if options.is_symmetric and not options.is_signed:
        raise QuantizationError(
            f"{where}: is_symmetric=True requires is_signed=True (got is_signed=False); set "
            "is_signed=True or is_symmetric=False"
        )
    if options.is_qat and options.is_symmetric:
        raise QuantizationError(
            f"{where}: is_qat=True cannot be combined with is_symmetric=True; QAT values are "
            "quantized asymmetrically, set is_symmetric=False"
        )


class QuantizationOptions(Serializable):
    """How values are quantized: n_bits, signedness, symmetry, QAT and narrow range.

    ``n_bits`` must be an int in [1, 32] (docs/contract.md §1.7). ``is_narrow`` and
    ``is_precomputed_qat`` are attributes only (not constructor arguments), as in the
    reference.
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "n_bits",
        "is_signed",
        "is_symmetric",
        "is_qat",
        "is_narrow",
        "is_precomputed_qat",
    )

    n_bits: int
    is_signed: bool
    is_symmetric: bool
    is_qat: bool
    is_narrow: bool
    is_precomputed_qat: bool

    def __init__(
        self,
        n_bits: int,
        is_signed: bool = False,
        is_symmetric: bool = False,
        is_qat: bool = False,
    ) -> None:
        """Create options.

        Args:
            n_bits: number of bits of the quantized integers.
            is_signed: integers in [-2^(n-1), 2^(n-1) - 1] instead of [0, 2^n - 1].
            is_symmetric: zero point 0 and scale from max|r| (requires is_signed).
            is_qat: values are already quantized (zero point 0 in the asymmetric case).

        Raises:
            ArgumentError: n_bits is not an int (a TypeError).
            QuantizationError: n_bits outside [1, 32] (docs/contract.md §1.7), or
                conflicting flags (see :func:`check_option_conflicts`).
        """
        check_n_bits(n_bits, "QuantizationOptions")
        self.n_bits = n_bits
        self.is_signed = is_signed
        self.is_symmetric = is_symmetric
        self.is_qat = is_qat
        self.is_narrow = False
        self.is_precomputed_qat = False
        check_option_conflicts(self)

    @classmethod
    def _without_n_bits(cls) -> QuantizationOptions:
        """Options with default flags and no ``n_bits`` attribute (a bare UniformQuantizer)."""
        opts = cls.__new__(cls)
        opts.is_signed = False
        opts.is_symmetric = False
        opts.is_qat = False
        opts.is_narrow = False
        opts.is_precomputed_qat = False
        return opts

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizationOptions):
            return NotImplemented
        return all(getattr(self, name, None) == getattr(other, name, None) for name in self.FIELDS)

    __hash__ = None  # type: ignore[assignment]

    def __deepcopy__(self, memo: dict[int, Any]) -> QuantizationOptions:
        """A deep copy without ``copy.deepcopy``'s generic reconstruction (each quantized
        array copies its options, dozens of times per calibrated block): attributes holding
        immutable scalars (the six fields, of any subclass too) are shared, anything else
        is deep-copied."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for name, value in vars(self).items():
            atomic = value is None or type(value) in _ATOMIC
            setattr(new, name, value if atomic else copy.deepcopy(value, memo))
        return new

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name, '<unset>')!r}" for name in self.FIELDS)
        return f"QuantizationOptions({fields})"

    def is_equal(self, opts: QuantizationOptions, ignore_sign_qat: bool = False) -> bool:
        """Compare is_qat, is_symmetric, n_bits and is_signed only.

        Args:
            opts: the other options.
            ignore_sign_qat: skip the sign when this is true and ``opts.is_qat`` is true.

        Returns:
            True if the compared fields match.
        """
        sign_equal = self.is_signed == opts.is_signed
        if ignore_sign_qat and opts.is_qat:
            sign_equal = True
        return bool(
            self.is_qat == opts.is_qat
            and self.is_symmetric == opts.is_symmetric
            and self.n_bits == opts.n_bits
            and sign_equal
        )

    def copy_opts(self, opts: QuantizationOptions) -> None:
        """Copy all six fields from ``opts``.

        Args:
            opts: the source options.
        """
        for name in self.FIELDS:
            setattr(self, name, getattr(opts, name))

    @property
    def quant_options(self) -> QuantizationOptions:
        """A copy of these options."""
        opts = QuantizationOptions._without_n_bits()
        opts.copy_opts(self)
        return opts

    def dump_dict(self) -> dict[str, Any]:
        """The six fields, in order."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> QuantizationOptions:
        """Rebuild options from ``dump_dict`` output.

        Args:
            metadata: the decoded fields.

        Returns:
            The options.
        """
        owner = cls.__name__
        n_bits = field(metadata, "n_bits", owner, is_n_bits, f"an int in [1, {MAX_N_BITS}]")
        flags = {name: field(metadata, name, owner, is_flag, "a bool") for name in cls.FIELDS[1:]}
        opts = cls(
            n_bits,
            is_signed=flags["is_signed"],
            is_symmetric=flags["is_symmetric"],
            is_qat=flags["is_qat"],
        )
        opts.is_narrow = flags["is_narrow"]
        opts.is_precomputed_qat = flags["is_precomputed_qat"]
        return opts

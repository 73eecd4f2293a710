"""UniformQuantizer: options + statistics + parameters, with quant/dequant (docs/contract.md §1.4).

The quantizer is a composition of a QuantizationOptions, a MinMaxQuantizationStats and a
UniformQuantizationParameters. Their fields are exposed as attributes of the quantizer
(``q.scale``, ``q.rmin``, ``q.n_bits``, ...), as in the reference, through small delegating
descriptors; reading or writing ``q.scale`` reads or writes the parameters part.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Generic, TypeVar, overload

import numpy as np

from fhequant.errors import DTypeError, NotCalibratedError, SerializationError
from fhequant.kernels import quant as _kernels
from fhequant.quantization.domain import is_flag, is_n_bits
from fhequant.quantization.options import QuantizationOptions
from fhequant.quantization.params import UniformQuantizationParameters, load_params, values_equal
from fhequant.quantization.stats import MinMaxQuantizationStats, load_range
from fhequant.serialization import Serializable, field

__all__ = ["ALLOWED_QUANT_DTYPES", "UniformQuantizer", "is_tracer"]

#: The integer/float dtypes ``quant`` may cast to.
ALLOWED_QUANT_DTYPES = (np.int64, np.int32, np.float32, np.float64)

T = TypeVar("T")


class _Delegated(Generic[T]):
    """Attribute ``name`` of the part stored in ``owner.<part>`` (read and write)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> _Delegated[T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> T: ...

    def __get__(self, obj: object | None, owner: type) -> T | _Delegated[T]:
        if obj is None:
            return self
        value: T = getattr(getattr(obj, self.part), self.name)
        return value

    def __set__(self, obj: object, value: T) -> None:
        setattr(getattr(obj, self.part), self.name, value)


def is_tracer(values: Any) -> bool:
    """Whether ``values`` is a concrete-python tracer (without importing concrete)."""
    if "concrete.fhe" not in sys.modules:
        return False
    from concrete.fhe.tracing import Tracer

    return isinstance(values, Tracer)


def _check_quant_dtype(dtype: Any) -> None:
    try:
        allowed = any(dtype is t for t in ALLOWED_QUANT_DTYPES) or (
            isinstance(dtype, np.dtype) and dtype in ALLOWED_QUANT_DTYPES
        )
    except TypeError:
        allowed = False
    if not allowed:
        raise DTypeError(
            f"UniformQuantizer.quant: dtype {dtype!r} is not allowed; use one of numpy.int64, "
            "numpy.int32, numpy.float32, numpy.float64"
        )


def _is_float_scale(scale: Any) -> bool:
    if isinstance(scale, (float, np.floating)):
        return True
    return isinstance(scale, np.ndarray) and np.issubdtype(scale.dtype, np.floating)


class UniformQuantizer(Serializable):
    """Uniform affine quantizer: q = clip(rint(r / scale + zero_point)), r = scale·(q - zp).

    Attributes are those of the three parts: n_bits, is_signed, is_symmetric, is_qat,
    is_narrow, is_precomputed_qat (options), rmax, rmin, uvalues (statistics), scale,
    zero_point, offset (parameters), plus no_clipping.
    """

    #: The attributes written to JSON (those present), in order, before no_clipping.
    DUMP_FIELDS: ClassVar[tuple[str, ...]] = (
        QuantizationOptions.FIELDS
        + MinMaxQuantizationStats.FIELDS
        + UniformQuantizationParameters.FIELDS
    )

    n_bits: _Delegated[int] = _Delegated("_options")
    is_signed: _Delegated[bool] = _Delegated("_options")
    is_symmetric: _Delegated[bool] = _Delegated("_options")
    is_qat: _Delegated[bool] = _Delegated("_options")
    is_narrow: _Delegated[bool] = _Delegated("_options")
    is_precomputed_qat: _Delegated[bool] = _Delegated("_options")
    rmax: _Delegated[Any] = _Delegated("_stats")
    rmin: _Delegated[Any] = _Delegated("_stats")
    uvalues: _Delegated[Any] = _Delegated("_stats")
    scale: _Delegated[Any] = _Delegated("_params")
    zero_point: _Delegated[Any] = _Delegated("_params")
    offset: _Delegated[Any] = _Delegated("_params")

    def __init__(
        self,
        options: QuantizationOptions | None = None,
        stats: MinMaxQuantizationStats | None = None,
        params: UniformQuantizationParameters | None = None,
        no_clipping: bool = False,
    ) -> None:
        """Create a quantizer from copies of the parts it is given.

        Args:
            options: quantization options (a bare quantizer has no n_bits).
            stats: calibration statistics.
            params: scale, zero point, offset; a non-None scale is cast to np.float64.
            no_clipping: skip the clip to the integer range in ``quant``.
        """
        self._options = QuantizationOptions._without_n_bits()
        self._stats = MinMaxQuantizationStats()
        self._params = UniformQuantizationParameters()
        self.no_clipping = no_clipping
        if options is not None:
            self._options.copy_opts(options)
        if stats is not None:
            self._stats.copy_stats(stats)
        if params is not None:
            self._params.copy_params(params)
            if self._params.scale is not None:
                self._params.scale = np.float64(self._params.scale)

    # --- the parts -----------------------------------------------------------------------

    def copy_opts(self, opts: QuantizationOptions) -> None:
        """Copy all option fields from ``opts``."""
        self._options.copy_opts(opts)

    def copy_stats(self, stats: MinMaxQuantizationStats) -> None:
        """Copy rmax, rmin and uvalues from ``stats``."""
        self._stats.copy_stats(stats)

    def copy_params(self, params: UniformQuantizationParameters) -> None:
        """Copy scale, zero_point and offset from ``params``."""
        self._params.copy_params(params)

    @property
    def quant_options(self) -> QuantizationOptions:
        """A copy of the options."""
        return self._options.quant_options

    @property
    def quant_stats(self) -> MinMaxQuantizationStats:
        """A copy of the statistics."""
        return self._stats.quant_stats

    @property
    def quant_params(self) -> UniformQuantizationParameters:
        """A copy of the parameters."""
        return self._params.quant_params

    def is_equal(self, opts: QuantizationOptions, ignore_sign_qat: bool = False) -> bool:
        """Compare the options (is_qat, is_symmetric, n_bits, is_signed) with ``opts``."""
        return self._options.is_equal(opts, ignore_sign_qat)

    def compute_quantization_stats(
        self,
        values: np.ndarray,
        name: str = "values",
        lazy_unique: bool = False,
        extremes: tuple[Any, Any] | None = None,
    ) -> None:
        """Compute rmin, rmax and uvalues from calibration ``values`` (uvalues on first read
        with ``lazy_unique``, rmin/rmax given as ``extremes`` when already known, see
        MinMaxQuantizationStats.compute_quantization_stats)."""
        self._stats.compute_quantization_stats(values, name, lazy_unique, extremes)

    def snapshot(self) -> UniformQuantizer:
        """A quantizer with these options and parameters (the same objects, no statistics):
        what ``quant`` uses, kept for a deferred quantization."""
        out = UniformQuantizer(no_clipping=self.no_clipping)
        out._options.copy_opts(self._options)
        out._params.copy_params(self._params)
        return out

    def resolve_uvalues(self) -> None:
        """Compute pending unique values now."""
        self._stats.resolve_uvalues()

    def check_is_uniform_quantized(self, options: QuantizationOptions) -> bool:
        """Whether the calibration values already sit on a uniform n_bits grid."""
        return self._stats.check_is_uniform_quantized(options)

    def compute_quantization_parameters(
        self, options: QuantizationOptions, stats: MinMaxQuantizationStats
    ) -> None:
        """Compute scale, zero_point and offset from ``options`` and ``stats``."""
        self._params.compute_quantization_parameters(options, stats)

    # --- quant / dequant ---------------------------------------------------------------

    def _check_params(self, what: str) -> None:
        if self.scale is None or self.zero_point is None:
            raise NotCalibratedError(
                f"UniformQuantizer.{what}: the quantizer has no scale/zero_point yet; compute "
                "them with compute_quantization_parameters(options, stats) or give params"
            )

    def clip_bounds(self) -> tuple[int, int]:
        """The integer range [lo, hi] of ``quant``: [-offset (+1 if narrow), 2^n - 1 - offset]."""
        lo = -self.offset + (1 if self.is_narrow else 0)
        return lo, 2**self.n_bits - 1 - self.offset

    def quant(self, values: Any, dtype: Any = np.int64) -> Any:
        """Quantize: rint(values / scale + zero_point), clipped unless no_clipping, cast.

        numpy 1.26 dtypes apply: float32 data is divided in float32 and keeps float32 unless
        the zero point is outside [-32768, 65535].

        Args:
            values: float data. ndarrays go to the native kernels; numpy scalars and concrete
                tracers to the numpy reference formula.
            dtype: numpy.int64 (default), numpy.int32, numpy.float32 or numpy.float64.

        Returns:
            The quantized values (a numpy scalar for 0-d input).

        Raises:
            DTypeError: ``dtype`` is not allowed (a TypeError).
            NotCalibratedError: scale or zero_point is missing.
        """
        _check_quant_dtype(dtype)
        self._check_params("quant")
        lo: int | None = None
        hi: int | None = None
        if not self.no_clipping:
            lo, hi = self.clip_bounds()
        if isinstance(values, np.ndarray):
            return _kernels.quantize(values, self.scale, self.zero_point, lo, hi, dtype)
        return _kernels.quantize_reference(values, self.scale, self.zero_point, lo, hi, dtype)

    def quant_narrow(self, values: Any) -> tuple[Any, int, int] | None:
        """``quant(values)`` in int8/int16 when the clip bounds allow, with its min and max.

        The same integers as :meth:`quant` (int64), without the int64 array: for storing
        calibration blocks compactly.

        Args:
            values: float ndarray.

        Returns:
            (integers, min, max), or None when only :meth:`quant` applies (no clipping,
            array parameters, other dtypes, NaN values).
        """
        self._check_params("quant")
        if self.no_clipping or not isinstance(values, np.ndarray):
            return None
        lo, hi = self.clip_bounds()
        return _kernels.quantize_narrow(values, self.scale, self.zero_point, lo, hi)

    def dequant(self, qvalues: Any) -> Any:
        """Dequantize: scale · (qvalues - float64(zero_point)), in float64.

        Args:
            qvalues: integer data (ndarray, numpy scalar, or a concrete tracer).

        Returns:
            The float64 values (NaN where scale is infinite and q - zp is 0).

        Raises:
            DTypeError: the scale is not a float (a TypeError).
            NotCalibratedError: scale or zero_point is missing.
        """
        self._check_params("dequant")
        if not _is_float_scale(self.scale):
            raise DTypeError(
                f"UniformQuantizer.dequant: scale must be a float, got {type(self.scale).__name__}"
                f" ({self.scale!r}); set a float scale"
            )
        with np.errstate(invalid="ignore", over="ignore"):
            if isinstance(qvalues, np.ndarray):
                return _kernels.dequantize(qvalues, self.scale, self.zero_point)
            return _kernels.dequantize_reference(qvalues, self.scale, self.zero_point)

    # --- equality and JSON ---------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UniformQuantizer):
            return NotImplemented
        if self.no_clipping != other.no_clipping:
            return False
        for name in self.DUMP_FIELDS:
            mine_has, other_has = hasattr(self, name), hasattr(other, name)
            if mine_has != other_has:
                return False
            if mine_has and not values_equal(getattr(self, name), getattr(other, name)):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in self.DUMP_FIELDS if hasattr(self, name)
        )
        return f"UniformQuantizer({fields}, no_clipping={self.no_clipping!r})"

    def dump_dict(self) -> dict[str, Any]:
        """The present attributes among DUMP_FIELDS, in order, then no_clipping."""
        out = {name: getattr(self, name) for name in self.DUMP_FIELDS if hasattr(self, name)}
        out["no_clipping"] = self.no_clipping
        return out

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> UniformQuantizer:
        """Rebuild a quantizer from ``dump_dict`` output.

        Args:
            metadata: the decoded fields.

        Returns:
            The quantizer.
        """
        owner = cls.__name__
        unknown = sorted(set(metadata) - {*cls.DUMP_FIELDS, "no_clipping"})
        if unknown:
            raise SerializationError(f"{owner}: unknown field(s) {unknown}")
        no_clipping = field(metadata, "no_clipping", owner, is_flag, "a bool", optional=True)
        quantizer = cls(no_clipping=bool(no_clipping))
        loaded: dict[str, Any] = {}
        if "n_bits" in metadata:
            loaded["n_bits"] = field(metadata, "n_bits", owner, is_n_bits, "an int in [1, 32]")
        for name in QuantizationOptions.FIELDS[1:]:
            if name in metadata:
                loaded[name] = field(metadata, name, owner, is_flag, "a bool")
        present = set(metadata)
        rmax, rmin = load_range(metadata, owner, required=False)
        scale, zero_point, offset = load_params(metadata, owner, required=False)
        loaded.update(rmax=rmax, rmin=rmin, scale=scale, zero_point=zero_point, offset=offset)
        given = [n for n in ("scale", "zero_point", "offset") if loaded[n] is not None]
        if given and len(given) < 3:
            raise SerializationError(
                f"{owner}: the fields 'scale', 'zero_point' and 'offset' go together; only "
                f"{given} are set"
            )
        if offset is not None and "n_bits" not in loaded:
            raise SerializationError(f"{owner}: the field 'offset' is set but 'n_bits' is missing")
        for name in cls.DUMP_FIELDS:
            if name in present:
                setattr(quantizer, name, loaded[name])
        return quantizer

"""QuantizedArray: float values, their quantized integers and the quantizer
(docs/contract.md §1.5)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any, cast

import numpy as np

from fhequant.errors import ArgumentError, DTypeError, SerializationError
from fhequant.kernels import quant as _kernels
from fhequant.quantization.domain import (
    check_explicit_params,
    check_explicit_stats,
    check_float_data,
    check_n_bits,
    check_scale_for_data,
    is_n_bits,
)
from fhequant.quantization.kwargs import fill_from_kwargs
from fhequant.quantization.options import QuantizationOptions, check_option_conflicts
from fhequant.quantization.params import UniformQuantizationParameters
from fhequant.quantization.quantizer import UniformQuantizer, _is_float_scale, is_tracer
from fhequant.quantization.stats import MinMaxQuantizationStats
from fhequant.serialization import Serializable, field

__all__ = ["QuantizedArray"]


def _copy_input(values: Any, copy: bool = True) -> Any:
    """Deep copy of an ndarray (unless ``copy`` is False), tracers as they are, anything else
    as an ndarray."""
    if isinstance(values, np.ndarray):
        return deepcopy(values) if copy else values
    if is_tracer(values):
        return values
    return np.array(values)


def _is_float_data(values: Any) -> bool:
    return isinstance(values, np.ndarray) and values.dtype in (np.float32, np.float64)


def _is_int_data(qvalues: Any) -> bool:
    if isinstance(qvalues, np.integer):
        return True
    return isinstance(qvalues, np.ndarray) and qvalues.dtype.kind in "iu"


def _ready(quantizer: UniformQuantizer, dequant: bool) -> bool:
    """Whether quant (dequant) has the parameters it needs, so deferring it raises nothing
    now that the eager call would have raised."""
    if quantizer.scale is None or quantizer.zero_point is None:
        return False
    return not dequant or _is_float_scale(quantizer.scale)


class QuantizedArray(Serializable):
    """An array with its quantized integers: ``qvalues = quantizer.quant(values)``.

    Attributes:
        n_bits: the bit width (always overrides ``options.n_bits``).
        quantizer: the UniformQuantizer (options, statistics and parameters).
        values: the float values (None for an output quantizer built without values).
        qvalues: the quantized integers (None likewise).
    """

    def __init__(
        self,
        n_bits: int,
        values: Any,
        value_is_float: bool = True,
        options: QuantizationOptions | None = None,
        stats: MinMaxQuantizationStats | None = None,
        params: UniformQuantizationParameters | None = None,
        *,
        copy_values: bool = True,
        defer: bool = False,
        **kwargs: Any,
    ) -> None:
        """Quantize float ``values`` (or dequantize integer ones).

        Args:
            n_bits: the bit width; it replaces ``options.n_bits``.
            values: float data to quantize (value_is_float=True), integer data to dequantize
                (value_is_float=False), or None to only build the quantizer.
            value_is_float: whether ``values`` are floats.
            options: quantization options (deep-copied).
            stats: statistics; computed from ``values`` when None (and values are floats).
            params: parameters; computed from the statistics when None (floats only).
            copy_values: copy ndarray ``values`` (the default); False keeps the caller's
                array, for freshly computed results that nothing else references.
            defer: compute the other side (``qvalues`` of float values, ``values`` of
                integers) on its first read instead of now, for ndarray data that is not
                modified in place before that read (the result is the same; an op output
                nobody reads is then never computed). Ignored for concrete tracers.
            **kwargs: fields of the options, statistics or parameters (n_bits, is_signed,
                is_symmetric, is_qat, is_narrow, is_precomputed_qat, rmax, rmin, scale,
                zero_point, offset). A stats/params object given above is filled in place.

        Raises:
            ArgumentError: partial statistics/parameters, unexpected kwargs, or integer values
                without parameters (a TypeError).
            DTypeError: values of the wrong dtype for ``value_is_float`` (a TypeError).
            QuantizationError: conflicting options, empty or non-finite float values, or a
                value outside the quantizer domain of docs/contract.md §1.7 (n_bits outside
                [1, 32], an explicit scale <= 0, rmin > rmax, a range that overflows).
        """
        check_n_bits(n_bits, "QuantizedArray")
        check_explicit_params(
            kwargs.get("scale"),
            kwargs.get("zero_point"),
            kwargs.get("offset"),
            int(n_bits),
            "QuantizedArray",
        )
        check_explicit_stats(kwargs.get("rmin"), kwargs.get("rmax"), "QuantizedArray")
        self.n_bits = n_bits
        options = QuantizationOptions(n_bits) if options is None else deepcopy(options)
        options.n_bits = n_bits
        filled, kwargs = fill_from_kwargs(options, QuantizationOptions, False, **kwargs)
        options = cast(QuantizationOptions, filled)  # not None: options was not None
        stats, kwargs = fill_from_kwargs(stats, MinMaxQuantizationStats, True, **kwargs)
        params, kwargs = fill_from_kwargs(params, UniformQuantizationParameters, False, **kwargs)
        if kwargs:
            raise ArgumentError(
                f"QuantizedArray got unexpected keyword arguments: {', '.join(kwargs)}; valid "
                "ones are the fields of QuantizationOptions, MinMaxQuantizationStats and "
                "UniformQuantizationParameters"
            )
        check_option_conflicts(options, "QuantizedArray")
        self.quantizer = UniformQuantizer(options, stats, params)
        self._values: Any = None
        self._qvalues: Any = None
        self._pending: str | None = None  # "values" or "qvalues": computed on first read
        # the values are this array's own copy, with their qvalues and the quantizer's unique
        # values still to compute: both are computed before the copy is handed out
        self._owned_lazy = False
        self._quant_by: UniformQuantizer | None = None  # the parameters of deferred qvalues
        # integers given narrow (int8/int16) with their min and max, None until computed
        # (:meth:`from_narrow`): ``compact_qvalues`` and ``narrow_qvalues`` hand them out
        # as they are, ``qvalues`` widens them
        self._narrow: tuple[Any, int | None, int | None] | None = None
        if values is None:
            return
        if value_is_float:
            check_float_data(values, "QuantizedArray")
            owned = copy_values and isinstance(values, np.ndarray)
            # the copy and the min/max scan in one read of the data when the kernel takes it
            fused = (
                _kernels.copy_min_max(values, "QuantizedArray values")
                if owned and stats is None
                else None
            )
            extremes = None if fused is None else fused[1:]
            values = _copy_input(values, copy_values) if fused is None else fused[0]
            if isinstance(values, np.ndarray) and not np.issubdtype(values.dtype, np.floating):
                raise DTypeError(
                    f"QuantizedArray: values of dtype {values.dtype} given with "
                    "value_is_float=True; pass float data, or integers with value_is_float=False "
                    "and scale/zero_point/offset"
                )
            self._values = values
            if stats is None:
                self.quantizer.compute_quantization_stats(
                    values, "QuantizedArray values", lazy_unique=owned, extremes=extremes
                )
            if params is None:
                self.quantizer.compute_quantization_parameters(options, self.quantizer.quant_stats)
            check_scale_for_data(self.quantizer.scale, values, "QuantizedArray")
            if (
                (defer or owned)
                and isinstance(values, np.ndarray)
                and _ready(self.quantizer, False)
            ):
                self._pending = "qvalues"
                self._owned_lazy = owned
                self._quant_by = self.quantizer.snapshot() if owned else None
            else:
                self.quantizer.resolve_uvalues()
                self._qvalues = self.quantizer.quant(values)
        else:
            if params is None:
                raise ArgumentError(
                    "QuantizedArray: value_is_float=False needs the quantization parameters; "
                    "give scale, zero_point and offset (or params=)"
                )
            qvalues = _copy_input(values, copy_values)
            if isinstance(qvalues, np.ndarray) and not np.issubdtype(qvalues.dtype, np.integer):
                raise DTypeError(
                    f"QuantizedArray: values of dtype {qvalues.dtype} given with "
                    "value_is_float=False; pass integer data, or floats with value_is_float=True"
                )
            self.qvalues = qvalues
            if defer and isinstance(qvalues, np.ndarray) and _ready(self.quantizer, True):
                self._pending = "values"
            else:
                self.dequant()

    def _deferred_quantizer(self) -> UniformQuantizer:
        return self.quantizer if self._quant_by is None else self._quant_by

    def _resolve_owned(self) -> None:
        """Compute what waits on the array's own copy of the values before it is handed out
        (it may then be modified in place): the qvalues and the quantizer's unique values."""
        if self._owned_lazy:
            self._owned_lazy = False
            self.quantizer.resolve_uvalues()
            if self._pending == "qvalues":
                self._pending = None
                self._qvalues = self._deferred_quantizer().quant(self._values)
                self._quant_by = None

    @property
    def values(self) -> Any:
        """The float values (None for an output quantizer built without values)."""
        self._resolve_owned()
        if self._pending == "values":
            self._pending = None
            self._values = self.quantizer.dequant(self.qvalues)
        return self._values

    @values.setter
    def values(self, values: Any) -> None:
        self._resolve_owned()
        if self._pending == "qvalues":  # the integers of the values being replaced
            self.qvalues = self._deferred_quantizer().quant(self._values)
        self._pending = None if self._pending == "values" else self._pending
        self._values = values

    @property
    def qvalues(self) -> Any:
        """The quantized integers (None for an output quantizer built without values)."""
        if self._pending == "qvalues":
            self._pending = None
            self._qvalues = self._deferred_quantizer().quant(self._values)
            self._quant_by = None
        if self._narrow is not None:
            self._qvalues = self._narrow[0].astype(np.int64)
            self._narrow = None
        return self._qvalues

    @qvalues.setter
    def qvalues(self, qvalues: Any) -> None:
        self._resolve_owned()
        if self._narrow is not None:
            self._qvalues = self._narrow[0].astype(np.int64)
            self._narrow = None
        if self._pending == "values":  # the floats of the integers being replaced
            self.values = self.quantizer.dequant(self._qvalues)
        self._pending = None if self._pending == "qvalues" else self._pending
        self._qvalues = qvalues

    def compact_qvalues(self) -> tuple[Any, int | None, int | None]:
        """The qvalues, with their min and max, in the smallest integer dtype the quantizer
        allows when they are still to be computed from float values (int8/int16 instead of
        int64, same numbers); otherwise ``qvalues`` itself (min and max then None).

        The array is not kept: a later read of ``qvalues`` computes the int64 integers.
        """
        narrow = self.narrow_parts()
        if narrow is None:
            return self.qvalues, None, None
        ints, low, high = narrow
        if low is None or high is None:
            low, high = (int(ints.min()), int(ints.max())) if ints.size else (0, 0)
            if self._narrow is not None:
                self._narrow = (ints, low, high)
        return ints, low, high

    def narrow_parts(self) -> tuple[Any, int | None, int | None] | None:
        """The integers in int8/int16 with their min and max (None where not known yet),
        when the array holds them so (:meth:`from_narrow`) or they are still to be
        quantized from float values and the quantizer allows it; else None (``qvalues``
        then holds them). Computed integers are not kept, as in :meth:`compact_qvalues`."""
        if self._narrow is not None:
            return self._narrow
        if self._pending == "qvalues":
            return self._deferred_quantizer().quant_narrow(self._values)
        return None

    def narrow_qvalues(self) -> Any:
        """The integers as a kernel that reads int8/int16/int32 takes them: the narrow
        array of :meth:`from_narrow` as it is (not widened, nothing computed), else
        ``qvalues``. The same numbers either way; the narrow array is only to be read."""
        if self._narrow is not None:
            return self._narrow[0]
        return self.qvalues

    @classmethod
    def from_narrow(
        cls,
        n_bits: int,
        ints: Any,
        low: int | None,
        high: int | None,
        *,
        options: QuantizationOptions,
        stats: MinMaxQuantizationStats,
        params: UniformQuantizationParameters,
    ) -> QuantizedArray:
        """An op output whose integers were quantized by a fused native kernel.

        The integers come narrow (int8/int16, with their min ``low`` and max ``high``, as
        :meth:`UniformQuantizer.quant_narrow` gives them): :meth:`compact_qvalues` and
        :meth:`narrow_qvalues` return them as they are, ``qvalues`` widens them to int64 on
        first read and ``values`` are their dequantized floats (the float results they were
        quantized from are never written). Also an op input re-quantized narrow (a lookup
        into a table of the op's integers).

        Args:
            n_bits: the bit width.
            ints: the integers (an array nothing modifies while this one holds it).
            low: their min (None: computed by :meth:`compact_qvalues` if it is asked for).
            high: their max (likewise).
            options: the output quantizer's options.
            stats: its statistics.
            params: its parameters.

        Returns:
            The QuantizedArray.
        """
        array = cls(n_bits, None, options=options, stats=stats, params=params)
        array._narrow = (
            ints,
            None if low is None else int(low),
            None if high is None else int(high),
        )
        array._pending = "values"
        return array

    @classmethod
    def from_narrow_quantizer(
        cls,
        quantizer: UniformQuantizer,
        ints: Any,
        low: int | None = None,
        high: int | None = None,
    ) -> QuantizedArray:
        """:meth:`from_narrow` with the options, statistics and parameters of ``quantizer``
        (integers that ``quantizer`` gave or would give)."""
        return cls.from_narrow(
            quantizer.n_bits,
            ints,
            low,
            high,
            options=quantizer.quant_options,
            stats=quantizer.quant_stats,
            params=quantizer.quant_params,
        )

    def __call__(self) -> Any:
        """The quantized values."""
        return self.qvalues

    def quant(self) -> Any:
        """Re-quantize ``values`` into ``qvalues`` and return them."""
        self.qvalues = self.quantizer.quant(self.values)
        return self.qvalues

    def dequant(self) -> Any:
        """Dequantize ``qvalues`` into ``values`` (overwriting them) and return them."""
        self._resolve_owned()  # the values are replaced: what depends on them first
        self.values = self.quantizer.dequant(self.qvalues)
        return self.values

    def update_values(self, values: Any) -> Any:
        """Replace the float values (copied) and re-quantize.

        Args:
            values: the new float values.

        Returns:
            The new qvalues.
        """
        self.values = deepcopy(values) if isinstance(values, np.ndarray) else values
        return self.quant()

    def update_quantized_values(self, qvalues: Any) -> Any:
        """Replace the quantized values (copied) and dequantize.

        Args:
            qvalues: the new integer values.

        Returns:
            The new float values.
        """
        self.qvalues = deepcopy(qvalues) if isinstance(qvalues, np.ndarray) else qvalues
        return self.dequant()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantizedArray):
            return NotImplemented
        return bool(
            self.n_bits == other.n_bits
            and self.quantizer == other.quantizer
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.qvalues, other.qvalues)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantizedArray(n_bits={self.n_bits!r}, qvalues={self.qvalues!r})"

    def dump_dict(self) -> dict[str, Any]:
        """quantizer, n_bits, values and qvalues, in order."""
        return {
            "quantizer": self.quantizer,
            "n_bits": self.n_bits,
            "values": self.values,
            "qvalues": self.qvalues,
        }

    @classmethod
    def load_dict(cls, metadata: dict[str, Any]) -> QuantizedArray:
        """Rebuild a QuantizedArray from ``dump_dict`` output.

        Args:
            metadata: the decoded fields.

        Returns:
            The array, with the loaded quantizer, values and qvalues.
        """
        owner = cls.__name__
        n_bits = field(metadata, "n_bits", owner, is_n_bits, "an int in [1, 32]")
        quantizer = field(
            metadata, "quantizer", owner, lambda q: isinstance(q, UniformQuantizer),
            "a UniformQuantizer",
        )  # fmt: skip
        values = field(
            metadata, "values", owner, _is_float_data, "a float32/float64 array", nullable=True
        )
        qvalues = field(metadata, "qvalues", owner, _is_int_data, "an integer array", nullable=True)
        if values is not None and qvalues is not None and np.shape(values) != np.shape(qvalues):
            raise SerializationError(
                f"{owner}: 'values' has shape {np.shape(values)} but 'qvalues' has shape "
                f"{np.shape(qvalues)}"
            )
        if getattr(quantizer, "n_bits", n_bits) != n_bits:
            raise SerializationError(
                f"{owner}: 'n_bits' ({n_bits}) differs from the quantizer's ({quantizer.n_bits})"
            )
        data = values if values is not None else qvalues
        for name in ("scale", "zero_point"):
            param = getattr(quantizer, name)
            if data is not None and isinstance(param, np.ndarray):
                try:
                    np.broadcast_shapes(np.shape(data), param.shape)
                except ValueError as exc:
                    raise SerializationError(
                        f"{owner}: the quantizer's {name!r} of shape {param.shape} does not "
                        f"broadcast with the data of shape {np.shape(data)}"
                    ) from exc
        array = cls(n_bits, None)
        array.quantizer = quantizer
        array._values = values
        array._qvalues = qvalues
        return array

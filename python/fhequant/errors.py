"""The exception hierarchy of fhequant.

Every error fhequant raises on purpose is a ``FhequantError``. Where a built-in type fits,
the class also derives from it (``ValueError``, ``TypeError``, ``RuntimeError``,
``ImportError``), so code written against the reference's built-in exceptions keeps working:
``except ValueError`` still catches a ``QuantizationError``.

Errors raised by the native core (``fhequant._core``) are mapped onto these classes; a
message always names the tensor, op or option at fault and says what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArtifactError",
    "ArtifactVersionError",
    "BitWidthError",
    "CalibrationConfigError",
    "CiphertextError",
    "CompilationError",
    "ConfigurationError",
    "DTypeError",
    "DeploymentError",
    "DistributedError",
    "EmptyTensorError",
    "EvaluationKeyError",
    "FhequantError",
    "GraphInputError",
    "InvalidOptionKeyError",
    "MissingDependencyError",
    "NoParametersError",
    "NonFiniteError",
    "NotCalibratedError",
    "NotCompiledError",
    "OnnxImportError",
    "OpRegistrationError",
    "OpsetError",
    "OverflowRiskError",
    "QuantizationError",
    "QuantizedOpError",
    "RemoteError",
    "RequestTooLargeError",
    "SerializationError",
    "ShapeError",
    "TuningError",
    "UnknownKeyError",
    "UnknownOpError",
    "UnquantizedTensorError",
    "UnsupportedOpError",
    "UnsupportedOptionError",
]


class FhequantError(Exception):
    """Base class of every error fhequant raises on purpose."""


# --- quantization -------------------------------------------------------------------------


class QuantizationError(FhequantError, ValueError):
    """Invalid quantization options, statistics or parameters."""


class NonFiniteError(QuantizationError):
    """NaN or infinite values in calibration data or in an intermediate tensor."""


class EmptyTensorError(QuantizationError):
    """Statistics requested for a tensor with no elements."""


class DTypeError(FhequantError, TypeError):
    """An array of a dtype the operation does not accept."""


class ArgumentError(FhequantError, TypeError):
    """Missing, partial or unexpected arguments (e.g. only some quantization parameters)."""


class ShapeError(FhequantError, ValueError):
    """Operand shapes that do not fit together."""


# --- graphs and ops -----------------------------------------------------------------------


class OnnxImportError(FhequantError, ValueError):
    """An ONNX model that cannot be read or checked."""


class OpsetError(OnnxImportError):
    """An ONNX opset outside the supported range."""


class UnsupportedOpError(OnnxImportError):
    """ONNX op types fhequant cannot run or quantize."""


class GraphInputError(FhequantError, ValueError):
    """Missing, extra or mis-shaped inputs given to a module."""


class QuantizedOpError(FhequantError, ValueError):
    """A quantized op built with attributes, constants or inputs it cannot handle."""


class OpRegistrationError(QuantizedOpError):
    """A quantized op class that cannot be registered: its ONNX op type is already taken by
    another class or has no float implementation (raised when the class is defined)."""


class UnquantizedTensorError(FhequantError, ValueError):
    """QAT import found tensors that should have been quantized in the model but were not."""


# --- FHE ----------------------------------------------------------------------------------


class ConfigurationError(FhequantError, ValueError):
    """Conflicting or unsupported options of a compile / run call (p_error and
    global_p_error together, bad encryption statuses, an unknown device or bound mode, a
    model given to the wrong entry point)."""


class UnknownOpError(ConfigurationError):
    """A per-op setting names ops the model does not have.

    Attributes:
        names: the unknown op names.
    """

    def __init__(self, message: str, names: list[str] | None = None) -> None:
        super().__init__(message)
        self.names = list(names or [])


class TuningError(FhequantError, ValueError):
    """``tune`` / ``n_bits="auto"`` found no setting within the budgets.

    Attributes:
        best_metric: the best metric any evaluated setting reached (fraction).
    """

    def __init__(self, message: str, best_metric: float = float("nan")) -> None:
        super().__init__(message)
        self.best_metric = best_metric


class CalibrationConfigError(ConfigurationError):
    """A bad ``calibration=`` argument: an unknown method or parameter, or per-op settings
    naming ops the model does not have."""


class BitWidthError(FhequantError, ValueError):
    """An integer value that does not fit the FHE bit-width limit."""


class CompilationError(FhequantError, RuntimeError):
    """concrete refused to trace or compile the circuit of a module; the original error is
    the ``__cause__``.

    Attributes:
        op: the name of the op being traced when concrete raised, or the op the circuit
            could not get parameters for; None when it cannot be known.
    """

    def __init__(self, message: str, op: str | None = None) -> None:
        super().__init__(message)
        self.op = op

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return (type(self), (str(self), self.op))


class NoParametersError(CompilationError, BitWidthError):
    """concrete found no cryptographic parameters for the circuit (its
    ``NoParametersFound``): a value, usually an encrypted product or a table lookup, is too
    wide for the error probability asked."""


class OverflowRiskError(BitWidthError):
    """An integer computation whose worst case does not fit its int64 accumulator."""


class NotCalibratedError(FhequantError, RuntimeError):
    """An op or module used before calibration."""


class NotCompiledError(FhequantError, RuntimeError):
    """FHE simulation or execution requested before ``compile``."""


class InvalidOptionKeyError(FhequantError, KeyError):
    """An option dict with keys the option does not define (e.g. rounding_threshold_bits)."""

    def __str__(self) -> str:
        # KeyError.__str__ would quote the whole message.
        return str(self.args[0]) if self.args else ""


class UnsupportedOptionError(FhequantError, NotImplementedError):
    """An option value the reference defines but does not implement (e.g. n_bits="auto")."""


# --- misc ---------------------------------------------------------------------------------


class SerializationError(FhequantError, ValueError):
    """JSON that fhequant cannot load (wrong format version, unknown type)."""


class MissingDependencyError(FhequantError, ImportError):
    """An optional dependency that the requested feature needs is not installed."""


# --- deployment (fhequant.deployment) ---------------------------------------------------------


class DeploymentError(FhequantError):
    """Base class of the errors of the client / server split (``fhequant.deployment``)."""


class ArtifactError(DeploymentError, SerializationError):
    """A deployment artifact (``client.zip``, ``server.zip``, a saved compiled module) that is
    missing, corrupted or not fhequant's."""


class ArtifactVersionError(ArtifactError):
    """A deployment artifact written by an incompatible format version or concrete-python
    version."""


class CiphertextError(DeploymentError, ValueError):
    """Serialized ciphertexts that are malformed, truncated, of the wrong count or shape, or
    made for another model."""


class EvaluationKeyError(DeploymentError, ValueError):
    """Serialized evaluation keys that are malformed, truncated or do not fit the model."""


class UnknownKeyError(DeploymentError, LookupError):
    """An evaluation-key id the server does not know."""


class RequestTooLargeError(DeploymentError, ValueError):
    """An upload or request larger than the server's configured limit."""


class RemoteError(DeploymentError, RuntimeError):
    """The inference server answered with an error.

    Attributes:
        status: the HTTP status code.
        code: the server's error code (e.g. ``"unknown_key"``), or None.
    """

    def __init__(self, message: str, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, int, str | None]]:
        return (type(self), (str(self), self.status, self.code))


class DistributedError(FhequantError, RuntimeError):
    """A row block of a distributed (Dask) calibration or inference failed; ``block`` is its
    index (None when the failure is not one block's) and the original error is the cause."""

    def __init__(self, message: str, block: int | None = None) -> None:
        super().__init__(message)
        self.block = block

    def __reduce__(self) -> tuple[type[DistributedError], tuple[str, int | None]]:
        # raised on a Dask worker and pickled back to the client: keep the block
        return (type(self), (str(self.args[0]), self.block))


# --- warnings -------------------------------------------------------------------------------
#
# Silent accuracy loss is reported with these categories, so users can filter them as a group
# (``warnings.filterwarnings("ignore", category=fhequant.errors.FhequantWarning)``) or one by
# one. They are listed in WARNINGS, not in __all__ (which lists the exception classes).


class FhequantWarning(UserWarning):
    """Base class of every warning fhequant emits on purpose."""


class CalibrationWarning(FhequantWarning):
    """Calibration data that will cost accuracy: a constant input, too few rows."""


class InputClippingWarning(FhequantWarning):
    """Inference inputs outside the calibrated range (clipped by the input quantizer) or
    infinite."""


class BrevitasImportWarning(FhequantWarning):
    """A Brevitas model quantized by fhequant where Brevitas did not quantize it (a layer
    without a QuantIdentity in front)."""


#: The warning categories of fhequant (FhequantWarning and its subclasses).
WARNINGS = (FhequantWarning, CalibrationWarning, InputClippingWarning, BrevitasImportWarning)

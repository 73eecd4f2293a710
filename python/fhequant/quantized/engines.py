"""How ``QuantizedModule.forward`` reads its ``fhe`` mode, and the inference engines it hands
inputs of other kinds to.

An inference engine runs ``forward`` on inputs that are not arrays in this process: Dask
arrays, whose row blocks ``fhequant.distributed`` maps over the workers of a Dask cluster. The
layer that knows the input kind registers its engine when it is imported
(:func:`register_inference_engine`); this layer never imports it. With no engine registered
(or none claiming the inputs) ``forward`` runs locally, as before.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Protocol

from fhequant.errors import GraphInputError

__all__ = [
    "FheMode",
    "InferenceEngine",
    "fhe_mode",
    "inference_engine_for",
    "register_inference_engine",
]


class FheMode(str, Enum):
    """How the integer forward runs."""

    DISABLE = "disable"
    SIMULATE = "simulate"
    EXECUTE = "execute"


def fhe_mode(fhe: Any) -> FheMode:
    """The mode named by ``fhe`` (a string or an enum), or a GraphInputError listing them."""
    if isinstance(fhe, FheMode):
        return fhe
    if isinstance(fhe, Enum):
        fhe = fhe.value
    try:
        return FheMode(fhe)
    except ValueError:
        raise GraphInputError(
            f"fhe={fhe!r} is not a valid mode; use one of {[m.value for m in FheMode]}"
        ) from None


class InferenceEngine(Protocol):
    """Runs ``QuantizedModule.forward`` on inputs of its own kind."""

    def claims(self, x: tuple[Any, ...]) -> bool:
        """Whether this engine runs the forward of the inputs ``x`` (one per model input)."""

    def forward(self, module: Any, *x: Any, fhe: FheMode) -> Any:
        """What ``module.forward(*x, fhe=fhe)`` returns locally, for these inputs."""


_ENGINES: list[InferenceEngine] = []


def register_inference_engine(engine: InferenceEngine) -> None:
    """Let ``QuantizedModule.forward`` hand the inputs ``engine`` claims to it (later
    registrations are asked first)."""
    _ENGINES.insert(0, engine)


def inference_engine_for(x: tuple[Any, ...]) -> InferenceEngine | None:
    """The engine that claims the inputs ``x``, or None (run locally)."""
    for engine in _ENGINES:
        if engine.claims(x):
            return engine
    return None

"""Running a compiled circuit: simulation and encrypted execution, one sample at a time.

The circuit is compiled for batch-1 inputs (docs/contract.md §6.2), so a batch is cut into rows and
the results are concatenated on axis 0. Execution generates the keys once (``circuit.keygen``
does nothing when keys exist) and reuses them for every sample. Before a circuit runs,
concrete's exit handler is removed so that the process keeps its real exit status
(``fhequant._concrete.preserve_exit_status``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fhequant._concrete import preserve_exit_status
from fhequant.errors import GraphInputError
from fhequant.fhe.compile import split_samples
from fhequant.fhe.progress import progress_enabled, samples, step

__all__ = ["concat_rows", "ensure_keys", "execute", "result_tuple", "simulate"]


def result_tuple(result: Any) -> tuple[np.ndarray, ...]:
    """A circuit's result (one array or a tuple of them) as a tuple of arrays."""
    if isinstance(result, tuple):
        return tuple(np.asarray(r) for r in result)
    return (np.asarray(result),)


def concat_rows(rows: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The per-sample results of a circuit joined on axis 0, one int64 array per output."""
    n_out = len(rows[0])
    return tuple(
        np.concatenate([np.asarray(r[k], dtype=np.int64) for r in rows], axis=0)
        for k in range(n_out)
    )


def _check_batch(q_inputs: Sequence[np.ndarray]) -> None:
    if not q_inputs:
        raise GraphInputError("no quantized input given; pass one int array per module input")
    sizes = {int(np.shape(q)[0]) for q in q_inputs}
    if len(sizes) != 1:
        raise GraphInputError(f"the quantized inputs have different batch sizes {sorted(sizes)}")


def simulate(circuit: Any, *q_inputs: np.ndarray, progress: bool = True) -> tuple[np.ndarray, ...]:
    """Simulate the circuit on each row (``circuit.simulate``), concatenating the results.

    A CRT circuit (packing key switches) is evaluated with ``circuit.graph`` and the
    configuration's p_error instead, as concrete cannot simulate it.

    Args:
        circuit: a compiled ``concrete.fhe.Circuit``.
        *q_inputs: one integer array per input, batch on axis 0.
        progress: report the progress (see ``fhequant.fhe.progress``: on a terminal, or
            when ``show_progress(True)``); False never does.

    Returns:
        One int64 array per circuit output.
    """
    _check_batch(q_inputs)
    preserve_exit_status()
    rows_in = split_samples(q_inputs)
    crt = int(getattr(circuit, "packing_key_switch_count", 0) or 0) != 0
    p_error = getattr(getattr(circuit, "configuration", None), "p_error", None)
    rows = []
    with _private_numpy_rng() if crt and p_error else contextlib.nullcontext():
        for sample in samples(rows_in, progress and progress_enabled(), "FHE simulation"):
            args = sample if isinstance(sample, tuple) else (sample,)
            if crt:
                # concrete cannot simulate CRT-encoded circuits: evaluate the graph with the
                # table-lookup error probability instead (docs/contract.md §6.2).
                rows.append(result_tuple(circuit.graph(*args, p_error=p_error)))
            else:
                rows.append(result_tuple(circuit.simulate(*args)))
    return concat_rows(rows)


#: Seed of the table-lookup errors drawn by a graph-evaluated (CRT) simulation.
SIMULATION_ERROR_SEED = 0

_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _private_numpy_rng() -> Iterator[None]:
    """Run the block on numpy's global generator seeded with SIMULATION_ERROR_SEED, then give
    the caller's state back.

    concrete's graph evaluation draws its table-lookup errors (``p_error``) from numpy's
    global generator, so the errors of a simulation depended on everything that had used that
    generator earlier in the process (another module's calibration or simulation): the same
    module simulated the same inputs differently after another one had run. Seeded here, a
    simulation gives the same result whatever ran before, and leaves the caller's random
    stream untouched. The lock keeps concurrent simulations from interleaving on the global
    generator.
    """
    with _GLOBAL_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(SIMULATION_ERROR_SEED)
        try:
            yield
        finally:
            np.random.set_state(state)


def _has_keys(circuit: Any) -> bool:
    keys = getattr(circuit, "keys", None)
    return bool(getattr(keys, "are_generated", False))


def ensure_keys(circuit: Any, seed: int | None = None, verbose: bool | None = None) -> None:
    """Generate the circuit's keys unless it has them already.

    Key generation takes tens of seconds for a small MLP: it is reported (see
    ``fhequant.fhe.progress``) on a terminal or with ``verbose=True``.

    Args:
        circuit: a compiled ``concrete.fhe.Circuit``.
        seed: optional seed for the secret keys (tests).
        verbose: report the key generation even without a terminal (False: only on one).
    """
    _keygen(circuit, seed, progress_enabled(verbose))


def _keygen(circuit: Any, seed: int | None, report: bool) -> None:
    with step("generating the FHE keys (once per circuit)", report and not _has_keys(circuit)):
        circuit.keygen(force=False, seed=seed)


def execute(circuit: Any, *q_inputs: np.ndarray, progress: bool = True) -> tuple[np.ndarray, ...]:
    """Encrypt, run and decrypt each row with keys generated once.

    Args:
        circuit: a compiled ``concrete.fhe.Circuit``.
        *q_inputs: one integer array per input, batch on axis 0.
        progress: report key generation and the samples (see ``fhequant.fhe.progress``:
            on a terminal, or when ``show_progress(True)``); False never does.

    Returns:
        One int64 array per circuit output.
    """
    _check_batch(q_inputs)
    preserve_exit_status()
    report = progress and progress_enabled()
    _keygen(circuit, None, report)
    rows_in = split_samples(q_inputs)
    rows = []
    for sample in samples(rows_in, report, "FHE execution"):
        args = sample if isinstance(sample, tuple) else (sample,)
        encrypted = circuit.encrypt(*args)
        encrypted = encrypted if isinstance(encrypted, tuple) else (encrypted,)
        result = circuit.run(*encrypted)
        result = result if isinstance(result, tuple) else (result,)
        rows.append(result_tuple(circuit.decrypt(*result)))
    return concat_rows(rows)

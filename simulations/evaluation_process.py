"""Central evaluation, and the run's initial model, in a process of their own.

A default ``fedge-sim`` run (``backend=local`` with worker processes) would import torch
in the server process only to build the initial model and evaluate the global model
after each round: ~1.5 s of CPU on the serial path before round 1, while the fork server
(:mod:`fedge.simulations.fork_server`) imports torch for the workers anyway. Here a child
forked from that fork server does both: it builds the initial weights as the server would
(``torch.manual_seed(seed)``, then ``task.build_model()``: the same arrays, bit for bit)
and evaluates each round's weights as :class:`~fedge.server.evaluation.CentralEvaluator`
does (the same loss and accuracy on the same data). The
server process composes the run, partitions and builds the strategy meanwhile, and never
imports torch.

:func:`torch_free_server` says when a run may do this: the things that need torch in the
server (shaping the model, the backdoor evaluator, FedBuff's simulated fleet, in-process
clients) each keep the in-process path.

Written by hand (a pipe to one child) because :mod:`concurrent.futures` pools cannot
pin a task to the process that holds the built evaluator.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import numpy as np

from fedge.simulations.clients import SHIP_DATA_BYTES
from fedge.simulations.fork_server import worker_context

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from omegaconf import DictConfig

    from fedge.tasks.base import FederatedTask, Split


def torch_free_server(cfg: DictConfig) -> bool:
    """Whether run ``cfg`` can keep torch out of the server process: ``backend=local`` with
    worker processes forked by a fork server, no model shaping (``shape.*``), no backdoor
    attack (its evaluator stamps triggers with torch) and synchronous rounds."""
    from fedge.conf.modes import is_async
    from fedge.conf.shape_settings import shaping_requested

    return (
        cfg.backend.name == "local"
        and cfg.backend.num_workers > 0
        and worker_context().get_start_method() == "forkserver"
        and not shaping_requested(cfg)
        and cfg.attack.name != "backdoor"
        and not is_async(cfg)
    )


#: Byte alignment of the test split the child evaluates on (a cache line, wider than any SIMD register).
ALIGNMENT = 64


def aligned_split(split: Split) -> Split:
    """A copy of ``split`` whose arrays start on :data:`ALIGNMENT` bytes. torch's vectorised
    kernels sum a float32 batch in an order that depends on where its first element lies
    (the loop peels the unaligned head), so a loss can differ in its last bits between two
    copies of the same data; aligned, the child's losses are the same run after run,
    whatever its heap held before."""
    from fedge.tasks.base import Split

    def aligned(array: np.ndarray) -> np.ndarray:
        raw = np.empty(array.nbytes + ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % ALIGNMENT
        out = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
        out[...] = array
        return out

    return Split(aligned(split.x), aligned(split.y))


def _serve(conn: Connection, task: FederatedTask, test: Split | None, seed: int) -> None:
    """The child: send the initial weights, then answer each weights mapping with
    ``("ok", (loss, accuracy))`` or ``("error", traceback)``; ``None`` or a closed pipe ends it.

    One model serves both: built after ``torch.manual_seed(seed)`` as the server process
    builds the initial model (:mod:`fedge.conf.shaping`), then loaded with each round's
    weights (all of its state: :func:`~fedge.client.model_io.load_arrays` is strict) and
    evaluated as :class:`~fedge.server.evaluation.CentralEvaluator` does. Imports neither
    :mod:`fedge.server` nor Flower (~0.4 s here, before round 0 could be evaluated)."""
    import torch

    from fedge.client.model_io import load_arrays, model_arrays
    from fedge.tasks.base import evaluate

    try:
        torch.manual_seed(seed)
        model = task.build_model()
        conn.send(("ok", model_arrays(model)))
        split = aligned_split(test if test is not None else task.load().test)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            weights = conn.recv()
        except EOFError:
            return
        if weights is None:
            return
        try:
            load_arrays(model, weights)
            conn.send(("ok", evaluate(model, task, split)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class EvaluationProcess:
    """The initial model of ``task`` seeded by ``seed`` and central evaluation on ``test``,
    in a child process (forked by the fork server: torch already imported there).

    ``test`` travels to the child when it is small (as a :class:`ClientRecipe`'s data does);
    a larger split is loaded again by the child (``task.load()`` is deterministic: checked
    by :func:`fedge.conf.build.build_task`). Use as a context manager, or :meth:`close`.
    """

    def __init__(self, task: FederatedTask, test: Split, seed: int) -> None:
        ctx = worker_context()
        shipped = test if test.x.nbytes + test.y.nbytes <= SHIP_DATA_BYTES else None
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, task, shipped, seed), daemon=True, name="fedge-evaluation")
        self._proc.start()
        child.close()
        self._initial: dict[str, np.ndarray] | None = None

    def _answer(self) -> object:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the evaluation process died (exit code {self._proc.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"the evaluation process failed:\n{value}")
        return value

    def initial_weights(self) -> dict[str, np.ndarray]:
        """The run's initial model, as named arrays in the model's state order."""
        if self._initial is None:
            answer = self._answer()
            assert isinstance(answer, dict)
            self._initial = answer
        return self._initial

    def evaluate_weights(self, weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the named arrays ``weights``."""
        self.initial_weights()  # the first answer of the child
        self._conn.send(dict(weights))
        answer = self._answer()
        assert isinstance(answer, tuple) and len(answer) == 2
        return float(answer[0]), float(answer[1])

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        """``(mean loss, accuracy in [0, 1])`` of the weights in ``arrays``."""
        return self.evaluate_weights({k: v.numpy() for k, v in arrays.items()})

    def close(self) -> None:
        """End the child (it also ends with this process: a daemon)."""
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
        self._conn.close()

    def __enter__(self) -> EvaluationProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The thin entry point of a ``backend=local`` worker process: run the jobs it is sent.

A spawned worker imports only this module, :mod:`fedge.simulations.broadcast`, what the
pickled :class:`ClientRecipe` names (the task, :mod:`fedge.client`) and torch: not the
Grid, the server, Flower, Hydra or the datasets libraries, nor ``torch._dynamo`` (clients
train with :class:`fedge.client.sgd.SGD`, not ``torch.optim``, whose first step imports
it: 1-2.5 s). At start-up it pays torch's remaining one-off costs (the first backward
pass and optimiser step) so they land in no client's ``compute_s``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from multiprocessing.connection import Connection

from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.client.shared_broadcast import SharedBroadcast
from fedge.simulations.broadcast import BroadcastReader, Job, JobTask
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.heap_reuse import keep_freed_memory


def run_tasks(recipe: ClientRecipe, tasks: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """Run each ``(node_id, Task bytes)`` on its client; return Update bytes."""
    return [recipe.client(node_id).handle(task_pb2.Task.FromString(payload)).SerializeToString() for node_id, payload in tasks]


def answer_split_tasks(
    recipe: ClientRecipe, tasks: Sequence[JobTask], models: Sequence[tensor_pb2.CompressedUpdate]
) -> list[task_pb2.Update]:
    """Run each ``(node_id, Task header, model slot)`` on its client, the model being
    ``models[slot]``; return the Updates. Each model is decoded once for all the clients
    it goes to (:class:`~fedge.client.shared_broadcast.SharedBroadcast`), each client
    checking it against its own model as it would a Task's."""
    shared = [SharedBroadcast(model) for model in models]
    return [recipe.client(node_id).handle(task_pb2.Task.FromString(header), shared[slot]) for node_id, header, slot in tasks]


def run_split_tasks(recipe: ClientRecipe, tasks: Sequence[JobTask], models: Sequence[tensor_pb2.CompressedUpdate]) -> list[bytes]:
    """:func:`answer_split_tasks`, each Update serialised (what crosses back from a worker process)."""
    return [update.SerializeToString() for update in answer_split_tasks(recipe, tasks, models)]


def warm_up_torch(threads: int | None = None) -> None:
    """Take one backward pass and optimiser step on a throw-away tensor, so their one-off
    costs are paid now; set torch's intra-op ``threads`` if given. Touches no random stream."""
    import torch

    from fedge.client.sgd import SGD

    if threads is not None:
        torch.set_num_threads(threads)
    weight = torch.zeros(1, requires_grad=True)
    optimiser = SGD([weight], lr=0.1, momentum=0.9)
    weight.sum().backward()
    optimiser.step()


def freeze_start_up_objects() -> None:
    """Move every object alive now (imported modules, torch's and Flower's, the task's
    data) out of the cyclic garbage collector's sight (:func:`gc.freeze`). They live for
    the whole run, yet each full collection walked them all again: with torch imported,
    ~0.3 s per collection, a few per 100 client-rounds (on a busy 2-core machine,
    ~15% of a one-step round). Objects made later are collected as usual."""
    gc.freeze()


def limit_thread_pools(threads: int) -> None:
    """Cap the BLAS and OpenMP pools of this process (numpy's ``dot``, ...) at ``threads``
    (threadpoolctl). Workers share the machine's cores: a pool per worker as wide as the
    machine spin-waits against the others (on a loaded 2-core machine, ``np.dot`` of 38k
    values took 4 ms with 2 BLAS threads and 0.17 ms with 1)."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # scikit-learn's dependency; without it the pools stay as they are
        return
    threadpool_limits(limits=threads)


class WorkerThreads:
    """Train in the calling process (``num_workers=0``) with a worker's thread counts: torch's
    intra-op threads (when ``with_torch``) and the BLAS/OpenMP pools at ``threads``, restored
    after each use. A float sum's order depends on the thread count, so this is what makes an
    in-process run's weights equal, bit for bit, to those of worker processes or Ray actors.

    The pools are found once, on first use (threadpoolctl's ``ThreadpoolController``):
    finding them walks every loaded shared library (~270 with torch), ~4-10 ms on this
    machine, which each round paid again when every use built a new ``threadpool_limits``.
    Libraries a process loads after its first delivery are not capped; a simulation has
    loaded its task, model and strategy by then.
    """

    def __init__(self, threads: int, with_torch: bool) -> None:
        self.threads, self.with_torch = threads, with_torch
        self._controller: Any = None  # threadpoolctl.ThreadpoolController, made on first use

    @contextmanager
    def __call__(self) -> Iterator[None]:
        from threadpoolctl import ThreadpoolController

        if self._controller is None:
            self._controller = ThreadpoolController()
        before = None
        if self.with_torch:
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            with self._controller.limit(limits=self.threads):
                yield
        finally:
            if before is not None:
                torch.set_num_threads(before)


def worker_main(conn: Connection, recipe: ClientRecipe, threads: int) -> None:
    """A worker's loop: receive a :class:`Job`, answer with its updates; ``None`` or a
    closed pipe ends it."""
    limit_thread_pools(threads)
    keep_freed_memory()  # model-sized buffers reused round after round, not fresh pages
    if recipe.needs_torch():
        warm_up_torch(threads)
    freeze_start_up_objects()
    reader = BroadcastReader()
    try:
        while True:
            try:
                job: Job | None = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            conn.send(run_split_tasks(recipe, job.tasks, reader.models(job)))
    finally:
        reader.close()

"""LocalGrid: the in-process backend, a Flower Grid over a pool of worker processes.

Clients are pinned to workers (node ``k``-th in id order lives in worker
``k % num_workers``), so the state a client keeps across rounds (error-feedback
residuals, ...) stays in one process for the whole run. Tasks and updates cross the
process boundary as the same serialised protos a device would receive, so byte
counts are real. ``num_workers=0`` runs every client in this process.

Written by hand (rather than on ``multiprocessing.Pool`` or ``concurrent.futures``)
because neither pins a piece of work to a chosen process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from multiprocessing.connection import Connection

from fedge.server.grid import FedgeGrid
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.worker import run_tasks, warm_up_torch, worker_main

log = logging.getLogger(__name__)


class LocalGrid(FedgeGrid):
    """In-process Grid: EdgeClients in ``num_workers`` pinned worker processes.

    Parameters
    ----------
    recipe:
        Builds each node's EdgeClient (its partition of the task's data).
    num_workers:
        Worker processes; 0 runs clients in the calling process.
    threads_per_worker:
        torch intra-op threads in each worker.
    """

    def __init__(self, recipe: ClientRecipe, num_workers: int = 0, threads_per_worker: int = 1) -> None:
        super().__init__(list(recipe.partitions))
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.recipe = recipe
        self.num_workers = min(num_workers, len(self._node_ids))
        self._worker_of = {n: i % max(self.num_workers, 1) for i, n in enumerate(self._node_ids)}
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        if self.num_workers:
            ctx = mp.get_context("spawn")  # fork after torch threads start is unsafe
            for _ in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(child, recipe, threads_per_worker), daemon=True)
                proc.start()
                child.close()
                self._workers.append((proc, parent))
        else:
            warm_up_torch()  # this process's thread count stays the caller's

    def _deliver(self, tasks: Sequence[tuple[int, bytes]]) -> list[bytes | None]:
        if not self._workers:
            return list(run_tasks(self.recipe, tasks))
        jobs: list[list[int]] = [[] for _ in self._workers]
        for position, (node_id, _) in enumerate(tasks):
            jobs[self._worker_of[node_id]].append(position)
        sent = [False] * len(self._workers)
        for w, ((proc, conn), positions) in enumerate(zip(self._workers, jobs)):
            if positions:
                try:
                    conn.send([tasks[p] for p in positions])
                    sent[w] = True
                except (BrokenPipeError, OSError):
                    self._log_dead(proc)
        answers: list[bytes | None] = [None] * len(tasks)
        for w, ((proc, conn), positions) in enumerate(zip(self._workers, jobs)):
            if not sent[w]:
                continue
            try:
                results = conn.recv()
            except (EOFError, OSError):
                self._log_dead(proc)
                continue
            for p, result in zip(positions, results):
                answers[p] = result
        return answers

    @staticmethod
    def _log_dead(proc: mp.process.BaseProcess) -> None:
        log.error("worker %s died (exit code %s); its clients count as failed", proc.name, proc.exitcode)

    def close(self) -> None:
        for proc, conn in self._workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self._workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            conn.close()
        self._workers = []

    def __del__(self) -> None:
        if getattr(self, "_workers", None):
            self.close()

"""LocalGrid: the in-process backend, a Flower Grid over a pool of worker processes.

Clients are pinned to workers (node ``k``-th in id order lives in worker
``k % num_workers``), so the state a client keeps across rounds (error-feedback
residuals, ...) stays in one process for the whole run. Tasks and updates cross the
process boundary as the protos a device would receive; the round's model crosses
once per round for all workers, through shared memory (:mod:`fedge.simulations.broadcast`),
and each task's byte count is its real serialised size. ``num_workers=0`` runs every
client in this process and hands the Grid the clients' Update objects (no serialise and
parse round trip; each is still counted at its serialised size).

The Grid's process and every worker keep the memory they free for the next round
(:mod:`fedge.simulations.heap_reuse`). Workers are forked by :mod:`multiprocessing`'s fork server where the platform has one
(else spawned; :mod:`fedge.simulations.fork_server`), which imported what every worker
needs once.

Written by hand (rather than on ``multiprocessing.Pool`` or ``concurrent.futures``)
because neither pins a piece of work to a chosen process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Sequence
from multiprocessing.connection import Connection

from flwr.app import Message

from fedge.protos.v1 import task_pb2, tensor_pb2
from fedge.server.grid import Answer, FedgeGrid
from fedge.server.message_translation import model_payload, task_header
from fedge.simulations.broadcast import BroadcastBoard, Job, SplitTask, distinct_payloads
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.fork_server import worker_context
from fedge.simulations.heap_reuse import keep_freed_memory
from fedge.simulations.worker import WorkerThreads, answer_split_tasks, freeze_start_up_objects, warm_up_torch, worker_main

log = logging.getLogger(__name__)

class LocalGrid(FedgeGrid):
    """In-process Grid: EdgeClients in ``num_workers`` pinned worker processes.

    Parameters
    ----------
    recipe:
        Builds each node's EdgeClient (its partition of the task's data).
    num_workers:
        Worker processes; 0 runs clients in the calling process (with a worker's thread
        counts while they train, so the weights are the same bit for bit).
    threads_per_worker:
        torch intra-op threads (and BLAS/OpenMP pool size) in each worker.
    """

    def __init__(self, recipe: ClientRecipe, num_workers: int = 0, threads_per_worker: int = 1) -> None:
        super().__init__(list(recipe.partitions))
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.recipe = recipe
        self.threads_per_worker = threads_per_worker
        self.num_workers = min(num_workers, len(self._node_ids))
        self._worker_of = {n: i % max(self.num_workers, 1) for i, n in enumerate(self._node_ids)}
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        self._board = BroadcastBoard()
        self._in_process_threads = WorkerThreads(threads_per_worker, recipe.needs_torch())  # num_workers=0
        keep_freed_memory()  # this process decodes (and with num_workers=0 trains) model-sized buffers every round
        if self.num_workers:
            ctx = worker_context()  # not fork: forking after torch threads start is unsafe
            for _ in range(self.num_workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(child, recipe, threads_per_worker), daemon=True)
                proc.start()
                child.close()
                self._workers.append((proc, parent))
        elif recipe.needs_torch():
            warm_up_torch()  # this process's thread count stays the caller's
        freeze_start_up_objects()

    def _encode(self, message: Message) -> tuple[task_pb2.Task, SplitTask]:
        header = task_header(message)
        return header, SplitTask(header.SerializeToString(), model_payload(message))

    def _deliver(self, tasks: Sequence[tuple[int, SplitTask]]) -> list[Answer]:
        if not self._workers:
            payloads, slot_of = distinct_payloads(tasks)
            models = [tensor_pb2.CompressedUpdate.FromString(p) for p in payloads]  # parsed once each
            with self._in_process_threads():  # a worker's float sums
                # the Updates themselves: nothing crosses a process, so they are neither
                # serialised nor parsed again (the Grid counts their serialised size)
                return list(answer_split_tasks(self.recipe, [(n, s.header, k) for (n, s), k in zip(tasks, slot_of)], models))
        segment, slots, slot_of = self._board.post(tasks)
        jobs: list[list[int]] = [[] for _ in self._workers]
        for position, (node_id, _) in enumerate(tasks):
            jobs[self._worker_of[node_id]].append(position)
        sent = [False] * len(self._workers)
        for w, ((proc, conn), positions) in enumerate(zip(self._workers, jobs)):
            if positions:
                job = Job(segment, slots, tuple((tasks[p][0], tasks[p][1].header, slot_of[p]) for p in positions))
                try:
                    conn.send(job)
                    sent[w] = True
                except (BrokenPipeError, OSError):
                    self._log_dead(proc)
        answers: list[Answer] = [None] * len(tasks)
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
        self._board.close()

    def __del__(self) -> None:
        if getattr(self, "_workers", None) or getattr(self, "_board", None) is not None:
            self.close()

"""The thin entry point of a ``backend=local`` worker process: run the tasks it is sent.

A spawned worker imports only this module, what the pickled :class:`ClientRecipe`
names (the task, :mod:`fedge.client`) and torch: not the Grid, the server or Flower.
At start-up it pays torch's one-off costs (the first ``torch.optim`` step imports
``torch._dynamo``, ~1 s) so they land in no client's ``compute_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing.connection import Connection

from fedge.protos.v1 import task_pb2
from fedge.simulations.clients import ClientRecipe


def run_tasks(recipe: ClientRecipe, tasks: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """Run each ``(node_id, Task bytes)`` on its client; return Update bytes."""
    out = []
    for node_id, payload in tasks:
        task = task_pb2.Task.FromString(payload)
        out.append(recipe.client(node_id).handle(task).SerializeToString())
    return out


def warm_up_torch(threads: int | None = None) -> None:
    """Take one optimiser step on a throw-away tensor, so the imports the first step
    triggers (``torch._dynamo``) happen now; set torch's intra-op ``threads`` if given.
    Touches no random stream."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    weight = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.sum().backward()
    optimiser.step()


def worker_main(conn: Connection, recipe: ClientRecipe, threads: int) -> None:
    """A worker's loop: receive a list of tasks, answer with their updates; ``None`` or a
    closed pipe ends it."""
    warm_up_torch(threads)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(run_tasks(recipe, job))

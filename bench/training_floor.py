"""The training both runtimes of :mod:`bench.runner` run, timed alone: the compute floor.

Both runtimes train each client with the same function
(:func:`fedge.client.training.train`), the same data, settings and seeds; only what runs
around it differs. :func:`training_cpu_ms` runs that function for one round's clients in
this process, with one torch thread (as the clients have), and reports its CPU
milliseconds per client-round. A runtime's CPU milliseconds per client-round minus this
floor is its *runtime overhead* per client-round: what the runtime adds to the training.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench.settings import BenchSettings, client_partitions, initial_arrays
from fedge.client.training import train
from fedge.simulations.clients import node_id_of

#: The round whose seeds the floor uses (any steady round trains the same amount).
FLOOR_ROUND = 2


def training_cpu_ms(settings: BenchSettings, repeats: int = 3) -> dict[str, float]:
    """CPU and wall milliseconds per client-round of the training alone: ``train`` on each
    of ``settings.sampled`` clients from the initial model, ``repeats`` times; the minimum
    over repeats of the mean per client-round (the least disturbed pass)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    task = settings.task()
    pool = task.load().train
    parts = client_partitions(settings, pool.y)[: settings.sampled]
    datasets = [pool.subset(p) for p in parts]
    state = initial_arrays(settings).to_torch_state_dict()
    model = task.build_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu_ms, wall_ms = [], []
    try:
        with threadpool_limits(limits=1):
            for _ in range(repeats):
                cpu = wall = 0.0
                for partition, data in enumerate(datasets):
                    model.load_state_dict(state, strict=True)
                    rng = np.random.default_rng([settings.seed, node_id_of(partition), FLOOR_ROUND])
                    torch.default_generator.manual_seed(int(rng.integers(2**31)))
                    c0, w0 = time.process_time(), time.perf_counter()
                    train(model, task, data, settings.train, rng)
                    cpu += time.process_time() - c0
                    wall += time.perf_counter() - w0
                cpu_ms.append(1000 * cpu / len(datasets))
                wall_ms.append(1000 * wall / len(datasets))
    finally:
        torch.set_num_threads(threads)
    return {
        "cpu_ms_per_client_round": min(cpu_ms),
        "wall_ms_per_client_round": min(wall_ms),
        "cpu_ms_per_client_round_median": statistics.median(cpu_ms),
    }

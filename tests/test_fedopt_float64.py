"""FedAdam through fedge's Grid equals FedAdam under Flower's own runtime (issue 17, must-show 3).

Flower's FedOpt strategies (FedAdam, FedYogi, FedAdagrad) keep the global model in
float64 (``x + eta * m / (sqrt(v) + tau)`` with float64 moments) and hand it back to
their own loop unchanged; Flower's ClientApps load it into their float32 networks.
fedge used to cast that model to float32 after every round, so FedAdam took ``delta_t``
against a rounded model. Now only what crosses to devices is cast: the test below
checks bit for bit that FedAdam is configured with the float64 model it computed.

How much the old rounding moved FedAdam depends on how sharply Adam normalises small
``delta_t`` (``eta / tau``). Measured once, 3 rounds (not asserted): at fedge's
``strategy=fedadam`` settings (eta 0.01, tau 1e-3) rounding vs keeping float64 moved
the model by ~3.5e-8 (3 and 10 clients, Dirichlet); with tau 1e-6 (3 clients, iid),
fedge before / after vs Flower's ``run_simulation``: 1.5e-4 / 1.7e-5 (what is left is
most likely fp32 delta coding, ``a + (b - a) != b`` in the last bit, amplified by
``eta / tau = 1e4``). The comparison below runs fedge-sim's fedadam settings, where the
two runtimes agree to <= 1e-6.

Both sides run the same federation: fedge-sim's config (``strategy=fedadam
partition=iid``, 3 clients, 3 rounds) through :func:`run_experiment` on one side;
on the other, Flower's ``run_simulation`` (Ray) with a ServerApp running the same
FedAdam on the same initial model, and the benchmark's ClientApp
(:mod:`bench.flower_side`), which trains each partition with fedge's own ``train``
seeded exactly as ``EdgeClient`` is (``tests/test_bench_runner.py`` checks that).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, Result
from flwr.simulation import run_simulation
from hydra.utils import instantiate

from bench.flower_side import build_client_app
from bench.settings import BenchSettings, client_partitions, initial_arrays
from fedge.simulations.ray_grid import start_ray

CLIENTS, ROUNDS, SEED = 3, 3, 0
TOLERANCE = 1e-6


def as_float64(model: ArrayRecord | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (v.numpy() if isinstance(model, ArrayRecord) else v).astype(np.float64) for k, v in model.items()}


def max_difference(a: ArrayRecord | dict[str, np.ndarray], b: ArrayRecord | dict[str, np.ndarray]) -> float:
    """Largest absolute difference between two models' weights (same names)."""
    x, y = as_float64(a), as_float64(b)
    assert set(x) == set(y)
    return max(float(np.max(np.abs(x[k] - y[k]))) for k in x)


def run_on_flower(settings: BenchSettings, strategy: FedAdam) -> Result:
    """FedAdam under Flower's simulation runtime (Ray), from the same initial model."""
    results: list[Result] = []
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        random.seed(settings.seed)
        results.append(strategy.start(
            grid=grid,
            initial_arrays=initial_arrays(settings),
            num_rounds=settings.rounds,
            train_config=ConfigRecord(settings.train.to_config()),
        ))

    started = start_ray(None, num_cpus=2)  # a private loopback-only Ray that run_simulation joins
    try:
        run_simulation(
            server_app=app,
            client_app=build_client_app(settings),
            num_supernodes=settings.num_clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"logging_level": logging.ERROR}},
        )
    finally:
        import ray

        if started and ray.is_initialized():
            ray.shutdown()
    assert results, "Flower's ServerApp did not finish"
    return results[0]


def test_fedadam_matches_flowers_run_simulation(make_cfg):
    from fedge.conf.build import train_defaults
    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg(["strategy=fedadam", "partition=iid", f"num_clients={CLIENTS}", f"rounds={ROUNDS}",
                    f"seed={SEED}", "backend.num_workers=0", "progress=false"])
    settings = BenchSettings(num_clients=CLIENTS, rounds=ROUNDS, partition="iid", seed=SEED)
    assert train_defaults(cfg) == settings.train  # the same local training on both sides
    fedge = run_experiment(cfg)
    flower_strategy = instantiate(cfg.strategy)
    assert isinstance(flower_strategy, FedAdam)
    # Flower's simulation registers its nodes beside the ServerApp's start: with the config's
    # min_available_nodes (2) a loaded machine let round 1 sample the 2 nodes up so far (once
    # in CI: 0.0219 apart). Waiting for all of them changes nothing in FedAdam's arithmetic.
    flower_strategy.min_available_nodes = CLIENTS
    flower = run_on_flower(settings, flower_strategy)

    assert all(r.replies == CLIENTS and r.failures == 0 for r in fedge.result.rounds[1:])
    assert flower.arrays is not None and len(flower.arrays)
    fedge_model = fedge.result.flower_result.arrays  # the model Flower's loop keeps, in fedge
    assert {a.dtype for a in fedge_model.values()} == {a.dtype for a in flower.arrays.values()} == {"float64"}
    moved = max_difference(fedge_model, initial_arrays(settings))
    difference = max_difference(fedge_model, flower.arrays)
    assert moved > 100 * TOLERANCE  # FedAdam really moved the model
    assert difference <= TOLERANCE, f"fedge's FedAdam departs from Flower's by {difference:.3g} after {ROUNDS} rounds"
    # What reaches devices and final_model.npz is the network's own float32
    assert {w.dtype for w in fedge.final_weights.values()} == {np.dtype(np.float32)}
    assert max_difference(fedge.final_weights, flower.arrays) <= TOLERANCE
    print(f"FedAdam, {ROUNDS} rounds: fedge vs Flower's run_simulation max |diff| = {difference:.3g}")


def test_fedadam_gets_back_its_own_float64_model_and_devices_get_float32(make_cfg):
    """Bit for bit: the model FedAdam computed in round r is the one it is configured with
    in round r + 1 (fedge used to hand it a float32 rounding), while the broadcast
    devices decode is float32."""
    from fedge.server.evaluation import CentralEvaluator
    from fedge.server.federation import run_federation
    from fedge.simulations.clients import ClientRecipe, node_id_of
    from fedge.simulations.local_grid import LocalGrid
    from fedge.strategies import CompressedStrategy

    class Recording(FedAdam):
        def __init__(self, **options):  # type: ignore[no-untyped-def]
            super().__init__(**options)
            self.returned: dict[int, dict[str, np.ndarray]] = {}
            self.configured: dict[int, dict[str, np.ndarray]] = {}

        def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
            self.configured[server_round] = {k: v.numpy() for k, v in arrays.items()}
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None:
                self.returned[server_round] = {k: v.numpy() for k, v in arrays.items()}
            return arrays, metrics

    cfg = make_cfg(["strategy=fedadam"])
    inner = Recording(**{k: v for k, v in cfg.strategy.items() if k != "_target_"})
    settings = BenchSettings(num_clients=CLIENTS, rounds=2, partition="iid", seed=SEED)
    task = settings.task()
    data = task.load()
    parts = client_partitions(settings, data.train.y)
    recipe = ClientRecipe(task, {node_id_of(i): p for i, p in enumerate(parts)}, settings.train, settings.seed)
    strategy = CompressedStrategy(inner)
    random.seed(SEED)
    with LocalGrid(recipe, 0) as grid:
        result = run_federation(strategy, grid, initial_arrays(settings), CentralEvaluator(task, data.test, SEED), 2,
                                ConfigRecord(settings.train.to_config()))
    assert {v.dtype for v in inner.returned[1].values()} == {np.dtype(np.float64)}
    for name, value in inner.returned[1].items():
        assert np.array_equal(inner.configured[2][name], value) and inner.configured[2][name].dtype == np.float64, name
    assert strategy.model_dtypes == dict.fromkeys(inner.returned[1], np.dtype(np.float32))  # what devices decode
    assert {v.dtype for v in result.final_arrays.values()} == {"float32"}
    assert {v.dtype for v in result.flower_result.arrays.values()} == {"float64"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_as_model_dtypes_casts_only_the_named_tensors(dtype):
    from fedge.strategies.compressed import as_model_dtypes

    arrays = ArrayRecord({"w": Array(np.arange(3, dtype=dtype)), "n": Array(np.arange(2, dtype=np.int64))})
    cast = as_model_dtypes(arrays, {"w": np.dtype(np.float32)})
    assert cast["w"].dtype == "float32" and cast["n"].dtype == "int64"
    assert (as_model_dtypes(arrays, {"w": np.dtype(dtype)}) is arrays)

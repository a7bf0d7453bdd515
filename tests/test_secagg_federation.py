"""Secure aggregation and the privacy budget in whole federations (local backend, real Flower strategies)."""

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from conftest import FAST
from fedge.protos.secagg import REQUEST_KEY
from fedge.protos.v1 import task_pb2
from fedge.server import run_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.conf.build import ConfigError
from fedge.simulations.experiment import run_experiment
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.strategies.privacy import PrivacyLedger, privacy_ledger
from fedge.strategies.secagg.strategy import SecAggSettings, SecAggStrategy
from test_compression_federation import small_federation  # noqa: F401 - the shared 6-client federation


@pytest.fixture(scope="module")
def federation(small_federation):
    return small_federation


@pytest.mark.parametrize("compression", ["none", "randk"])
def test_fedge_sim_with_secagg_trains_and_records_every_round(make_cfg, tmp_path, compression):
    cfg = make_cfg(["secagg=on", f"compression={compression}", "num_clients=6", "rounds=2", "partition=iid", *FAST])
    outcome = run_experiment(cfg, tmp_path)
    rounds = outcome.result.rounds
    if compression == "none":
        assert rounds[-1].accuracy > rounds[0].accuracy + 0.1
    assert rounds[-1].loss < rounds[0].loss  # random-k sends 5% a round: it learns, slowly
    import json

    secagg = json.loads(outcome.results_path.read_text())["secagg"]
    assert [r["round"] for r in secagg] == [1, 2]
    for record in secagg:
        assert record["abandoned"] is None and record["outcome"]["masked"] == record["outcome"]["revealed"] == 6 == record["sampled"]
        assert record["modulus"] == 6 * 255 + 1  # 8-bit values, 6 devices: the sum stays below it
    if compression == "randk":
        assert secagg[0]["vector_length"] < 0.1 * 38283  # only the shared random-k coordinates (+1 weight)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["strategy=fedmedian"], "median of the individual updates"),
        (["strategy=krum"], "FedMedian|Krum"),
        (["compression=topk"], "would not line up"),
    ],
)
def test_what_secagg_cannot_run_is_refused_with_the_reason(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        run_experiment(make_cfg(["secagg=on", *overrides, *FAST]))


class _LosingGrid(LocalGrid):
    """Loses the unmask-stage answers of some nodes (devices that vanish after masking)."""

    lost: set[int] = set()

    def _deliver(self, tasks):
        answers = super()._deliver(tasks)
        for i, (node, payload) in enumerate(tasks):
            task = payload.task()  # a SplitTask (fedge.simulations.broadcast)
            if REQUEST_KEY in task.config and task.kind == "query" and node in self.lost:
                if b"\x22" == task.config[REQUEST_KEY].bytes_value[:1]:  # field 4 (unmask) of SecAggRequest
                    answers[i] = None
        return answers


def _secagg(settings=None):
    inner = FedAvg(fraction_evaluate=0.0, min_available_nodes=6)
    return SecAggStrategy(CompressedStrategy(inner), settings or SecAggSettings(clip=0.2, max_examples=300))


def test_too_few_survivors_abandon_the_round_and_the_model_stays(federation):
    task, data, recipe = federation
    strategy = _secagg()
    initial = ArrayRecord(task.build_model().state_dict())
    with _LosingGrid(recipe) as grid:
        grid.lost = set(list(recipe.partitions)[:3])  # k = 5, t = 3: 3 of 6 reveal nothing
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 1, ConfigRecord())
    record = strategy.rounds[0]
    assert record.abandoned is not None and "t = 3 are needed" in record.abandoned
    assert record.outcome.dropped_after_masking == sorted(grid.lost)
    for name, array in initial.items():
        np.testing.assert_array_equal(result.final_arrays[name].numpy(), array.numpy())


def test_secagg_aggregate_matches_plain_fedavg_of_the_same_round(federation):
    """One round, no clipping at play: SecAgg's one aggregate is the FedAvg of the individual
    updates up to 16-bit rounding."""
    task, data, recipe = federation
    initial = ArrayRecord(task.build_model().state_dict())
    finals = []
    for strategy in (CompressedStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=6)),
                     _secagg(SecAggSettings(value_bits=16, clip=1.0, max_examples=10_000))):
        fresh = ClientRecipe(task, recipe.partitions, recipe.defaults, seed=0)
        with LocalGrid(fresh) as grid:
            finals.append(run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 1, ConfigRecord()).final_arrays)
    plain, secure = ({k: v.numpy() for k, v in f.items()} for f in finals)
    initial_np = {k: v.numpy() for k, v in initial.items()}
    for name in plain:
        change = np.abs(plain[name] - initial_np[name]).max()
        # weights are 16-bit levels of examples/10000 and values 16-bit levels of [-1, 1]
        assert np.abs(secure[name] - plain[name]).max() <= 1e-3 + 1e-2 * change, name


# -- privacy budget ------------------------------------------------------------------------
def _direct_epsilon(q, z, rounds, delta):
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("secure", [False, True])
def test_epsilon_per_round_equals_the_accountant_called_directly(federation, secure):
    task, data, recipe = federation
    dp = DifferentialPrivacyClientSideFixedClipping(
        FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_available_nodes=6, min_train_nodes=3),
        noise_multiplier=1.1, clipping_norm=0.5, num_sampled_clients=3,
    )
    strategy = CompressedStrategy(dp)
    if secure:
        strategy = SecAggStrategy(strategy, SecAggSettings(clip=0.5))
    ledger = privacy_ledger(strategy, num_nodes=6, delta=1e-5)
    assert ledger == PrivacyLedger(1.1, 0.5, 1e-5)
    initial = ArrayRecord(task.build_model().state_dict())
    with LocalGrid(recipe) as grid:
        result = run_federation(strategy, grid, initial, CentralEvaluator(task, data.test), 3, ConfigRecord(), privacy=ledger)
    epsilons = [r.epsilon for r in result.rounds[1:]]
    assert epsilons == [_direct_epsilon(0.5, 1.1, r, 1e-5) for r in (1, 2, 3)]
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert result.rounds[0].epsilon is None


def test_runs_without_a_dp_wrapper_have_no_ledger():
    assert privacy_ledger(CompressedStrategy(FedAvg()), 10, 1e-5) is None

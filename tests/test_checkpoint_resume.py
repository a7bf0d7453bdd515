"""Per-round checkpoints and resume: the resumed run equals the one that never stopped (issue 5)."""

import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedge.client import TrainConfig
from fedge.server import checkpoint as checkpoint_module
from fedge.server.checkpoint import CHECKPOINT_PATTERN, load_checkpoint
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import run_federation
from fedge.server.resume import run_resumable
from fedge.simulations.clients import ClientRecipe, node_id_of
from fedge.simulations.local_grid import LocalGrid
from fedge.strategies import CompressedStrategy
from fedge.tasks.digits import DigitsTask

TASK = DigitsTask()
DATA = TASK.load()
PARTS = np.array_split(np.random.default_rng(0).permutation(len(DATA.train)), 4)
TRAIN = TrainConfig(local_steps=3)


def fresh():
    random.seed(0)
    np.random.seed(0)
    recipe = ClientRecipe(TASK, {node_id_of(i): p for i, p in enumerate(PARTS)}, TRAIN, 0)
    torch.manual_seed(0)
    initial = ArrayRecord(TASK.build_model().state_dict())
    return recipe, initial, CentralEvaluator(TASK, DATA.test)


def both_ways_compressed():
    """conf/compression/downlink_q8: top-1% uplink with error feedback, 8-bit downlink deltas."""
    from omegaconf import OmegaConf

    from fedge.simulations.compression import compression_setup
    from fedge.simulations.config import CompressionConfig

    settings = OmegaConf.to_container(OmegaConf.structured(CompressionConfig(
        codec="topk", ratio=0.01, values="q8", error_feedback=True, downlink="q8", downlink_delta=True,
    )))
    setup = compression_setup(settings)
    inner = FedAvgM(fraction_train=0.75, fraction_evaluate=0.0, server_momentum=0.9)
    return CompressedStrategy(inner, setup.uplink, setup.downlink, setup.downlink_delta, setup.max_update_bytes)


STRATEGIES = {
    # partial sampling: the resumed run must also restore the client-sampling generator
    "fedadam": lambda: CompressedStrategy(FedAdam(fraction_train=0.75, fraction_evaluate=0.0, eta=0.01)),
    "fedavgm": lambda: CompressedStrategy(FedAvgM(fraction_train=0.75, fraction_evaluate=0.0, server_momentum=0.9)),
    # the wrapper's own state too: which model devices hold, for downlink deltas
    "fedavgm-downlink-delta": both_ways_compressed,
}


def weights(arrays):
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_after_round_two_equals_an_uninterrupted_run(name, tmp_path):
    make = STRATEGIES[name]
    recipe, initial, evaluator = fresh()
    plain = run_federation(make(), LocalGrid(recipe), initial, evaluator, 4, ConfigRecord(TRAIN.to_config()))

    recipe, initial, evaluator = fresh()
    first = run_resumable(
        make(), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp",
        train_config=ConfigRecord(TRAIN.to_config()),
    )
    assert [r.round for r in first.rounds] == [0, 1, 2] and load_checkpoint(tmp_path).round == 2
    random.seed(99)  # a restarted process starts with other generator states
    np.random.seed(99)
    resumed = run_resumable(
        make(), LocalGrid(recipe), initial, evaluator, 4, tmp_path, "fp",
        resume=True, train_config=ConfigRecord(TRAIN.to_config()),
    )
    assert [r.round for r in resumed.rounds] == [0, 1, 2, 3, 4]
    assert [r.accuracy for r in resumed.rounds] == [r.accuracy for r in plain.rounds]
    assert [r.train_loss for r in resumed.rounds] == [r.train_loss for r in plain.rounds]
    assert resumed.rounds[1].uplink_bytes == plain.rounds[1].uplink_bytes > 0
    expected, got = weights(plain.final_arrays), weights(resumed.final_arrays)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_the_strategy_state_is_what_makes_resume_exact(tmp_path, monkeypatch):
    """Control: resuming FedAdam without its moment estimates gives another model."""
    recipe, initial, evaluator = fresh()
    plain = run_federation(STRATEGIES["fedadam"](), LocalGrid(recipe), initial, evaluator, 3, ConfigRecord(TRAIN.to_config()))
    recipe, initial, evaluator = fresh()
    run_resumable(STRATEGIES["fedadam"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp",
                  train_config=ConfigRecord(TRAIN.to_config()))
    monkeypatch.setattr("fedge.server.strategy_state.restore", lambda *a, **k: None)
    resumed = run_resumable(STRATEGIES["fedadam"](), LocalGrid(recipe), initial, evaluator, 3, tmp_path, "fp",
                            resume=True, train_config=ConfigRecord(TRAIN.to_config()))
    expected, got = weights(plain.final_arrays), weights(resumed.final_arrays)
    assert any(not np.array_equal(expected[k], got[k]) for k in expected)


def test_resume_refuses_another_configuration_and_a_missing_checkpoint(tmp_path):
    recipe, initial, evaluator = fresh()
    run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 1, tmp_path, "fp-a")
    with pytest.raises(ValueError, match="different experiment configuration"):
        run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp-b", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path / "none", "fp", resume=True)


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    recipe, initial, evaluator = fresh()
    run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 1, tmp_path, "fp")
    before = (tmp_path / CHECKPOINT_PATTERN.format(1)).read_bytes()
    real_savez = np.savez

    def torn_write(f, **arrays):
        real_savez(f, **{k: arrays[k] for k in list(arrays)[:2]})  # part of the file, then the crash
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(checkpoint_module.np, "savez", torn_write)
    with pytest.raises(KeyboardInterrupt):
        run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp", resume=True)
    assert (tmp_path / CHECKPOINT_PATTERN.format(1)).read_bytes() == before
    # no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_PATTERN.format(0), CHECKPOINT_PATTERN.format(1)]
    assert load_checkpoint(tmp_path).round == 1

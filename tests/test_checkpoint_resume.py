"""Per-round checkpoints and resume: the resumed run equals the one that never stopped (issue 5)."""

import dataclasses
import errno
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedge.client import TrainConfig
from fedge.server import checkpoint as checkpoint_module
from fedge.server.checkpoint import CHECKPOINT_PATTERN, CheckpointError, checkpoint_files, load_checkpoint, read_checkpoint
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

    from fedge.protos.codecs.compression_setup import compression_setup
    from fedge.conf.schema import CompressionConfig

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


# -- issue 11: rotation, verification, poisoned rounds, full disks ----------------------
def _rounds_on_disk(directory):
    return [r for r, _ in checkpoint_files(directory)]


def _plain(rounds):
    """FedAvgM over ``rounds`` rounds without checkpoints: what a resumed run must equal."""
    recipe, initial, evaluator = fresh()
    return run_federation(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, rounds, ConfigRecord(TRAIN.to_config()))


def _checkpointed(rounds, directory, **options):
    recipe, initial, evaluator = fresh()
    return run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, rounds, directory, "fp",
                         train_config=ConfigRecord(TRAIN.to_config()), **options)


def test_the_newest_n_checkpoints_are_kept(tmp_path):
    _checkpointed(4, tmp_path, keep=2)
    assert _rounds_on_disk(tmp_path) == [4, 3]


def _rewrite(path, change_meta=None, change_model=None, keep_digest=True):
    """Rewrite a checkpoint file by hand (an editor, a bit flip), keeping its stored digest."""
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    meta = json.loads(bytes(contents["meta"]).decode())
    if change_meta:
        change_meta(meta)
    contents["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    if change_model:
        change_model(contents)
    with open(path, "wb") as f:
        np.savez(f, **contents)


def test_an_edited_round_number_and_a_renamed_file_are_detected(tmp_path):
    recipe, initial, evaluator = fresh()
    run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp")
    newest = tmp_path / CHECKPOINT_PATTERN.format(2)
    _rewrite(newest, change_meta=lambda meta: meta.update(round=5))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        read_checkpoint(newest)
    # the digest-intact round-1 file renamed to round 7: its name and content disagree
    (tmp_path / CHECKPOINT_PATTERN.format(1)).rename(tmp_path / CHECKPOINT_PATTERN.format(7))
    with pytest.raises(CheckpointError, match="its name says round 7"):
        read_checkpoint(tmp_path / CHECKPOINT_PATTERN.format(7))
    assert load_checkpoint(tmp_path, "fp").round == 0  # the newest valid one


def test_resume_passes_over_corrupt_and_non_finite_checkpoints_and_says_why(tmp_path, caplog):
    plain = _plain(3)
    _checkpointed(3, tmp_path)
    (tmp_path / CHECKPOINT_PATTERN.format(3)).write_bytes(b"PK\x03\x04 torn")  # a corrupt newest file
    checkpoint_module.save_checkpoint(tmp_path, _nan_copy(read_checkpoint(tmp_path / CHECKPOINT_PATTERN.format(2)), 9), keep=10)
    with caplog.at_level("WARNING"):
        chosen = load_checkpoint(tmp_path, "fp")
    assert chosen.round == 2
    assert "not finite" in caplog.text and "unreadable" in caplog.text
    resumed = _checkpointed(3, tmp_path, resume=True)
    assert [r.accuracy for r in resumed.rounds] == [r.accuracy for r in plain.rounds]
    assert _rounds_on_disk(tmp_path) == [3, 2, 1]  # the passed-over files were set aside
    assert sorted(p.name for p in tmp_path.glob("*.rejected")) == [
        CHECKPOINT_PATTERN.format(3) + ".rejected", CHECKPOINT_PATTERN.format(9) + ".rejected"]


def _nan_copy(checkpoint, server_round):
    model = {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in checkpoint.model.items()}
    return dataclasses.replace(checkpoint, round=server_round, model=model)


def test_no_valid_checkpoint_is_a_clear_error_naming_each_file(tmp_path):
    recipe, initial, evaluator = fresh()
    run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 1, tmp_path, "fp", keep=2)
    for _, path in checkpoint_files(tmp_path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        run_resumable(STRATEGIES["fedavgm"](), LocalGrid(recipe), initial, evaluator, 2, tmp_path, "fp", resume=True)
    assert str(error.value).startswith("no valid checkpoint to resume from")
    assert CHECKPOINT_PATTERN.format(0) in str(error.value) and CHECKPOINT_PATTERN.format(1) in str(error.value)


def test_a_full_disk_is_logged_and_the_federation_goes_on(tmp_path, monkeypatch, caplog):
    plain = _plain(3)
    real_savez = np.savez
    writes = []

    def disk_full_at_round_two(f, **arrays):
        writes.append(1)
        if len(writes) == 3:  # rounds 0, 1 written; round 2 hits a full disk
            real_savez(f, **{k: arrays[k] for k in list(arrays)[:1]})
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(f, **arrays)

    monkeypatch.setattr(checkpoint_module.np, "savez", disk_full_at_round_two)
    with caplog.at_level("ERROR"):
        result = _checkpointed(3, tmp_path, keep=5)
    assert [r.accuracy for r in result.rounds] == [r.accuracy for r in plain.rounds]
    assert "round 2: checkpoint NOT written" in caplog.text and "No space left on device" in caplog.text
    assert "newest checkpoint kept: round 1" in caplog.text
    assert _rounds_on_disk(tmp_path) == [3, 1, 0] and not list(tmp_path.glob(".checkpoint-*"))


def test_a_checkpoint_after_a_poisoned_round_holds_the_honest_only_model(tmp_path):
    """A device sends 1e30 updates in round 2: the round's checkpoint (and the run resumed
    from it) equals the federation in which that device stayed silent in round 2."""
    from hostile_grid import HostileGrid, fill_update, silent

    from fedge.strategies.reply_validation import ReplyPolicy

    def make():
        return CompressedStrategy(FedAvgM(fraction_train=1.0, fraction_evaluate=0.0, server_momentum=0.9),
                                  validation=ReplyPolicy(max_num_examples=max(len(p) for p in PARTS)))

    attacker = node_id_of(3)
    recipe, initial, evaluator = fresh()
    honest = run_federation(make(), HostileGrid(recipe, {attacker: silent}, start_round=2), initial, evaluator, 3,
                            ConfigRecord(TRAIN.to_config()))
    recipe, initial, evaluator = fresh()
    strategy = make()
    run_resumable(strategy, HostileGrid(recipe, {attacker: fill_update(1e30)}, start_round=2), initial, evaluator, 2,
                  tmp_path, "fp", train_config=ConfigRecord(TRAIN.to_config()))
    assert [(d.server_round, d.node_id) for d in strategy.log.dropped] == [(2, attacker)]
    after_poison = load_checkpoint(tmp_path, "fp")
    assert after_poison.round == 2 and after_poison.log["dropped"][0]["node_id"] == attacker
    resumed = run_resumable(make(), HostileGrid(recipe, {attacker: silent}, start_round=3), initial, evaluator, 3,
                            tmp_path, "fp", resume=True, train_config=ConfigRecord(TRAIN.to_config()))
    assert [r.accuracy for r in resumed.rounds] == [r.accuracy for r in honest.rounds]
    assert resumed.rounds[2].dropped == 1
    expected, got = weights(honest.final_arrays), weights(resumed.final_arrays)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_fedge_server_refuses_a_corrupt_checkpoint_before_any_device_joins(tmp_path):
    """A clear one-line error and exit status 2, not a traceback, and no port opened."""
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / CHECKPOINT_PATTERN.format(4)).write_bytes(b"not a checkpoint")
    server = Path(sys.executable).with_name("fedge-server")
    proc = subprocess.run(
        [str(server), "--resume", "--insecure", "server.address=127.0.0.1:0", f"server.checkpoint_dir={checkpoints}",
         "num_clients=2", f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no valid checkpoint to resume from" in proc.stderr and "unreadable" in proc.stderr
    assert "Traceback" not in proc.stderr and "listening" not in proc.stdout

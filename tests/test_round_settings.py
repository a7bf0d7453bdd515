"""round_settings: a round config parsed once per process, never mixed up with another."""

import numpy as np
import pytest

from fedge.client import TrainConfig
from fedge.client.round_settings import MAX_ENTRIES, round_settings
from fedge.client.torch_trainer import TorchTrainer
from fedge.protos.codecs.plan import UplinkPlan
from fedge.tasks.digits import DigitsTask


def test_one_parse_per_defaults_and_config():
    defaults = TrainConfig(local_steps=2)
    config = {"client.lr": 0.5, "client.batch_size": 16, "fedge.codec": "q8"}
    first = round_settings(defaults, config)
    assert round_settings(defaults, dict(config)) is first  # same contents: the same objects
    assert first.train == defaults.updated_from(config) and first.plan == UplinkPlan.from_config(config)
    assert round_settings(TrainConfig(local_steps=2), config) is not first  # another defaults object
    changed = round_settings(defaults, {**config, "client.lr": 0.25})
    assert changed.train.lr == 0.25 and first.train.lr == 0.5


def test_equal_values_of_another_type_are_another_config():
    defaults = TrainConfig()
    assert round_settings(defaults, {"client.checkpointing": True}).train.checkpointing is True
    with pytest.raises(ValueError, match="must be a bool"):  # 1 == True in Python, not on the wire
        round_settings(defaults, {"client.checkpointing": 1})
    with pytest.raises(ValueError, match="must be a bool"):  # a refused config raises every time
        round_settings(defaults, {"client.checkpointing": 1})


def test_the_memo_stays_small():
    defaults = TrainConfig()
    for lr in range(3 * MAX_ENTRIES):
        assert round_settings(defaults, {"client.lr": float(lr + 1)}).train.lr == float(lr + 1)
    from fedge.client import round_settings as module

    assert len(module._memo) <= MAX_ENTRIES


def test_torch_trainer_views_follow_training_and_loading():
    task = DigitsTask()
    trainer = TorchTrainer(task, seed=0)
    data = task.load().train.subset(np.arange(64))
    start = trainer.arrays()
    trainer.train(data, TrainConfig(local_steps=2), np.random.default_rng(0), 1, set(), 7)
    trained = trainer.arrays()
    state = {k: v.detach().numpy() for k, v in trainer.model.state_dict().items()}
    assert all(np.array_equal(trained[k], state[k]) for k in state)  # the views see SGD's in-place steps
    assert any(not np.array_equal(trained[k], start[k]) for k in start)
    trainer.load(start)
    assert all(np.array_equal(trainer.model.state_dict()[k].numpy(), start[k]) for k in start)
    frozen = {"features.0.weight"}
    trainer.train(data, TrainConfig(local_steps=1), np.random.default_rng(0), 2, frozen, 7)
    assert [n for n, p in trainer.model.named_parameters() if not p.requires_grad] == ["features.0.weight"]
    trainer.train(data, TrainConfig(local_steps=1), np.random.default_rng(0), 3, set(), 7)
    assert all(p.requires_grad for p in trainer.model.parameters())  # unfrozen again when the set changes

"""The simulation hot path's shortcuts give the same numbers as what they replace.

* ``TorchTrainer.load``/``arrays`` copy into and out of the model's cached tensors:
  the same values as ``load_state_dict``/``state_dict``, the same refusals.
* ``TorchTrainer.train`` seeds torch's CPU generator only: the same draws as
  ``torch.manual_seed``.
* ``update_norm`` sums with einsum: the float64 norm of the whole update.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedge.client.model_io import load_arrays, model_arrays
from fedge.client.torch_trainer import TorchTrainer
from fedge.strategies.reply_validation import update_norm
from fedge.tasks.digits import DigitsTask


def _weights(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return model_arrays(DigitsTask().build_model())


def test_load_and_arrays_match_load_state_dict():
    trainer = TorchTrainer(DigitsTask(), seed=0)
    weights = _weights(7)
    trainer.load(weights)
    reference = DigitsTask().build_model()
    load_arrays(reference, weights)
    got = trainer.arrays()
    assert got.keys() == weights.keys()
    for name, value in model_arrays(reference).items():
        assert np.array_equal(got[name], value) and got[name].dtype == value.dtype
    got[next(iter(got))][...] = 123.0  # a copy: writing to it leaves the model alone
    assert not np.array_equal(trainer.arrays()[next(iter(got))], got[next(iter(got))])


def test_load_refuses_other_names_and_shapes():
    trainer = TorchTrainer(DigitsTask(), seed=0)
    weights = _weights(1)
    name = next(iter(weights))
    with pytest.raises(RuntimeError, match="Missing key"):
        trainer.load({k: v for k, v in weights.items() if k != name})
    with pytest.raises(RuntimeError, match="size mismatch"):
        trainer.load({**weights, name: np.zeros((1, 2), dtype=np.float32)})


def test_load_follows_a_replaced_model():
    trainer = TorchTrainer(DigitsTask(), seed=0)
    trainer.arrays()  # caches the first model's tensors
    trainer.model = DigitsTask().build_model()
    weights = _weights(3)
    trainer.load(weights)
    assert all(np.array_equal(v, weights[k]) for k, v in model_arrays(trainer.model).items())


def test_cpu_generator_seed_draws_as_manual_seed():
    torch.manual_seed(11)
    a = torch.rand(5)
    torch.default_generator.manual_seed(11)
    assert torch.equal(torch.rand(5), a)


def test_update_norm_is_the_float64_norm():
    rng = np.random.default_rng(0)
    delta = {"a": rng.standard_normal((30, 40)).astype(np.float32), "b": np.array(3.0, dtype=np.float32),
             "c": np.full(5, 1e30, dtype=np.float32)}
    expected = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values()))
    assert update_norm(delta) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(update_norm(delta))

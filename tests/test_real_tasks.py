"""The real-data tasks (issue 6): image (MNIST sample) and har (smartwatch IMU by subject)."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from fedge.simulations.partition import partition_indices
from fedge.tasks.har import CHANNEL_MEAN, CHANNEL_STD, HarTask, windows
from fedge.tasks.image import ImageTask


@pytest.fixture(scope="module")
def har():
    task = HarTask()
    return task, task.load()


@pytest.fixture(scope="module")
def image():
    task = ImageTask()
    return task, task.load()


def test_image_is_5000_mnist_digits_28x28(image):
    task, data = image
    assert data.train.x.shape == (4000, 1, 28, 28) and data.test.x.shape == (1000, 1, 28, 28)
    assert data.train.x.dtype == np.float32 and data.train.y.dtype == np.int64
    assert np.bincount(data.test.y).tolist() == [100] * 10  # stratified
    assert data.groups is None  # no writer ids in this sample
    assert abs(float(data.train.x.mean())) < 0.05 and abs(float(data.train.x.std()) - 1) < 0.05
    assert task.build_model()(torch.from_numpy(data.test.x[:5])).shape == (5, 10)


def test_har_windows_by_subject(har):
    task, data = har
    assert data.train.x.shape[1:] == (6, 100) and data.test.x.shape[1:] == (6, 100)
    assert len(data.train) == 3693 and len(data.test) == 770
    assert set(np.unique(data.train.y)) == set(range(7)) == set(np.unique(data.test.y))
    assert data.groups is not None and len(data.groups) == len(data.train)
    assert np.unique(data.groups).tolist() == list(range(1, 11))
    pooled = np.concatenate([data.train.x, data.test.x]).transpose(1, 0, 2).reshape(6, -1)
    assert np.abs(pooled.mean(axis=1)).max() < 0.1 and np.abs(pooled.std(axis=1) - 1).max() < 0.15
    # the constants are the dataset's own statistics
    from seglearn.datasets import load_watch

    raw = np.concatenate(load_watch()["X"])
    np.testing.assert_allclose(raw.mean(axis=0), CHANNEL_MEAN, atol=1e-4)
    np.testing.assert_allclose(raw.std(axis=0), CHANNEL_STD, atol=1e-4)


def test_har_test_windows_never_overlap_training_windows():
    series = np.arange(1000, dtype=np.float32)[:, None].repeat(6, axis=1)
    task = HarTask(window=100, stride=50, test_fraction=0.2)
    cut = 800
    head, tail = windows(series[:cut], 100, 50), windows(series[cut:], 100, 50)
    assert head[:, 0].max() < cut <= tail[:, 0].min()
    assert len(head) == 15 and len(tail) == 3 and task.window == 100


def test_har_model_fits_a_microcontroller(har):
    task, data = har
    model = task.build_model()
    params = sum(p.numel() for p in model.parameters())
    assert params == 6423  # 25.7 KB float32, as the task documents
    assert params * 4 < 32 * 1024
    assert model(torch.from_numpy(data.test.x[:4])).shape == (4, 7)


def test_natural_partition_gives_one_client_per_subject(make_cfg, har):
    _, data = har
    cfg = make_cfg(["task=har", "partition=natural"])
    parts = partition_indices(data.train.y, instantiate(cfg.partition), data.groups, cfg.partition.partition_by)
    assert len(parts) == 10
    assert [len(np.unique(data.groups[p])) for p in parts] == [1] * 10
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(data.train)))


def test_natural_partition_without_ids_is_a_clear_error(make_cfg, image):
    _, data = image
    cfg = make_cfg(["task=image", "partition=natural"])
    with pytest.raises(ValueError, match="natural ids"):
        partition_indices(data.train.y, instantiate(cfg.partition), data.groups, cfg.partition.partition_by)


@pytest.mark.parametrize("bad", [{"window": 4}, {"stride": 0}, {"test_fraction": 1.0}])
def test_har_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        HarTask(**bad)


@pytest.fixture
def one_torch_thread():
    """In-process clients with one torch thread, as in a worker (two threads crawl on a busy CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_har_federation_by_subject_learns(make_cfg, one_torch_thread):
    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg(
        ["task=har", "partition=natural", "strategy=fedavgm", "client.lr=0.02", "rounds=4", "client.local_epochs=1"]
        + ["progress=false", "backend.num_workers=0"]
    )
    outcome = run_experiment(cfg)
    rounds = outcome.result.rounds
    assert all(r.replies == 10 for r in rounds[1:])  # one client per subject, all answered
    assert rounds[-1].accuracy > 2 * rounds[0].accuracy and rounds[-1].accuracy > 0.25  # chance: 1/7
    assert rounds[-1].loss < rounds[0].loss


def test_natural_partition_needs_matching_num_clients(make_cfg):
    from fedge.conf.build import ConfigError
    from fedge.simulations.experiment import run_experiment

    with pytest.raises(ConfigError, match="num_clients=10"):
        run_experiment(make_cfg(["task=har", "partition=natural", "num_clients=5", "progress=false"]))

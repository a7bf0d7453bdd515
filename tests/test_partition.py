"""Partitioning through flwr-datasets partitioners, as the Hydra configs build them."""

import numpy as np
import pytest
from hydra.utils import instantiate

from fedge.simulations.partition import partition_indices
from fedge.tasks.digits import DigitsTask


@pytest.fixture(scope="module")
def labels():
    return DigitsTask().load().train.y


def build(make_cfg, overrides):
    return instantiate(make_cfg(overrides).partition)


def test_iid_covers_every_example_once(make_cfg, labels):
    parts = partition_indices(labels, build(make_cfg, ["partition=iid", "num_clients=7"]))
    assert len(parts) == 7
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))


def test_pathological_gives_each_client_few_classes(make_cfg, labels):
    parts = partition_indices(
        labels, build(make_cfg, ["partition=pathological", "num_clients=10", "partition.num_classes_per_partition=2"])
    )
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)


def test_dirichlet_alpha_controls_skew(make_cfg, labels):
    def mean_classes(alpha):
        parts = partition_indices(labels, build(make_cfg, ["partition=dirichlet", f"partition.alpha={alpha}"]))
        assert len(np.concatenate(parts)) == len(labels)
        # Effective number of classes per client: exp(entropy of its label histogram).
        eff = []
        for p in parts:
            freq = np.bincount(labels[p], minlength=10) / len(p)
            freq = freq[freq > 0]
            eff.append(np.exp(-(freq * np.log(freq)).sum()))
        return np.mean(eff)

    assert mean_classes(0.1) < mean_classes(0.5) < mean_classes(100.0)


def test_empty_partition_is_a_clear_error(labels):
    from flwr_datasets.partitioner import IidPartitioner

    with pytest.raises(ValueError, match="empty"):
        partition_indices(labels[:3], IidPartitioner(5))


def test_natural_id_partitioning_draws_no_progress_bar(capfd):
    from flwr_datasets.partitioner import NaturalIdPartitioner

    groups = np.repeat(np.arange(4), 50)
    parts = partition_indices(np.zeros(200, dtype=np.int64), NaturalIdPartitioner("group"), groups)
    assert sorted(len(p) for p in parts) == [50] * 4
    out, err = capfd.readouterr()
    assert "partition_id_to_indices" not in out + err and "it/s" not in err, err


def test_partitioner_warnings_still_reach_the_user(labels):
    from flwr_datasets.partitioner import PathologicalPartitioner

    with pytest.warns(UserWarning, match="will NOT be used"):
        partition_indices(labels, PathologicalPartitioner(5, "label", 2, seed=0))


def _flwr_partitions(labels, partitioner):
    """The partitions read from flwr-datasets one by one, as fedge first read them."""
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": np.asarray(labels), "idx": np.arange(len(labels))})
    return [np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(partitioner.num_partitions)]


@pytest.mark.parametrize("examples, clients", [(1797, 10), (1797, 7), (1000, 1000), (5003, 64), (60, 59)])
def test_iid_numpy_path_gives_flwr_datasets_partitions(examples, clients):
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.arange(examples) % 10
    fast = partition_indices(labels, IidPartitioner(clients))
    slow = _flwr_partitions(labels, IidPartitioner(clients))
    assert len(fast) == clients
    assert all(f.dtype == np.int64 and np.array_equal(f, s) for f, s in zip(fast, slow))


def test_iid_numpy_path_names_empty_partitions():
    from flwr_datasets.partitioner import IidPartitioner

    with pytest.raises(ValueError, match=r"partitions \[50, 51, .* and 30 more\] are empty"):
        partition_indices(np.zeros(50, dtype=np.int64), IidPartitioner(100))


@pytest.mark.parametrize("name", ["dirichlet", "pathological"])
def test_partitions_read_through_arrow_are_the_ones_flwr_datasets_returns(make_cfg, labels, name):
    fast = partition_indices(labels, build(make_cfg, [f"partition={name}", "num_clients=10"]))
    slow = _flwr_partitions(labels, build(make_cfg, [f"partition={name}", "num_clients=10"]))
    assert len(fast) == len(slow) == 10
    assert all(f.dtype == np.int64 and np.array_equal(f, s) for f, s in zip(fast, slow))


def test_ten_thousand_iid_clients_cover_every_example_once():
    from flwr_datasets.partitioner import IidPartitioner

    parts = partition_indices(np.arange(60_000) % 10, IidPartitioner(10_000))
    assert len(parts) == 10_000 and {len(p) for p in parts} == {6}
    assert np.array_equal(np.concatenate(parts), np.arange(60_000))


def _dirichlet_both(labels, **kwargs):
    """flwr-datasets' Dirichlet partitions (or its error) and the numpy ones, with their warnings."""
    import warnings

    from flwr_datasets.partitioner import DirichletPartitioner

    from fedge.simulations.numpy_partitioners import dirichlet_partition

    sides = []
    for build_parts in (
        lambda: _flwr_partitions(labels, DirichletPartitioner(partition_by="label", **kwargs)),
        lambda: dirichlet_partition(labels, kwargs["num_partitions"], kwargs["alpha"], **{
            k: v for k, v in kwargs.items() if k not in ("num_partitions", "alpha")
        }),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                parts = build_parts()
            except ValueError:
                parts = None
        sides.append((parts, len(caught)))
    return sides


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_partitions=10, alpha=0.5, seed=0),  # the default run
        dict(num_partitions=10, alpha=0.1, seed=3),
        dict(num_partitions=7, alpha=2.0, seed=1, self_balancing=True),
        dict(num_partitions=30, alpha=0.3, seed=5, self_balancing=True, min_partition_size=5),
        dict(num_partitions=10, alpha=1, seed=2, shuffle=False),
        dict(num_partitions=40, alpha=0.2, seed=4, min_partition_size=20),  # redraws, with warnings
        dict(num_partitions=100, alpha=0.01, seed=0, min_partition_size=15),  # gives up after 10 redraws
    ],
)
def test_numpy_dirichlet_gives_flwr_datasets_partitions(labels, kwargs):
    (slow, slow_warnings), (fast, fast_warnings) = _dirichlet_both(labels, **kwargs)
    assert fast_warnings == slow_warnings
    if slow is None:
        assert fast is None
        return
    assert len(fast) == len(slow) == kwargs["num_partitions"]
    assert all(f.dtype == np.int64 and np.array_equal(f, s) for f, s in zip(fast, slow))


def test_numpy_dirichlet_matches_on_many_classes_and_partitions():
    labels = np.random.default_rng(1).integers(0, 100, 20_000)
    (slow, _), (fast, _) = _dirichlet_both(labels, num_partitions=200, alpha=0.5, seed=9, min_partition_size=0)
    assert all(np.array_equal(f, s) for f, s in zip(fast, slow))


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_default_partitions_need_no_flwr_datasets(name):
    """The IID and Dirichlet configs split by numpy: flwr-datasets (HF datasets, pandas) stays unloaded."""
    import subprocess
    import sys

    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from fedge.conf.schema import register_configs
from fedge.simulations.partition import partition_for
from fedge.tasks.digits import DigitsTask
register_configs()
with initialize_config_dir(config_dir={str(conf)!r}, version_base="1.3"):
    cfg = compose("config", overrides=["partition={name}"])
parts = partition_for(cfg.partition, DigitsTask().load().train.y)
heavy = sorted(m for m in ("flwr_datasets", "datasets", "seaborn") if m in sys.modules)
print(len(parts), heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["10", "[]"], done.stdout + done.stderr


def test_partition_for_takes_flwr_datasets_for_other_partitioners(make_cfg, labels):
    from fedge.simulations.partition import partition_for

    cfg = make_cfg(["partition=pathological", "num_clients=10"])
    assert all(np.array_equal(a, b) for a, b in zip(
        partition_for(cfg.partition, labels), partition_indices(labels, build(make_cfg, ["partition=pathological"]))
    ))
    from fedge.simulations.numpy_partitioners import numpy_partition

    listed = make_cfg(["partition=dirichlet", "partition.alpha=[1,1,1,1,1,1,1,1,1,1]"]).partition
    by_group = make_cfg(["partition=dirichlet", "partition.partition_by=group"]).partition
    assert numpy_partition(listed, labels) is None and numpy_partition(by_group, labels) is None

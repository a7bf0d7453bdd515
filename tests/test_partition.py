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

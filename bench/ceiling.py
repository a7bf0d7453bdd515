"""Central ceiling vs federated accuracy of the real tasks (issue 6, must-show 1).

For each task, the same Hydra config drives both sides: the central model is the
task's own architecture trained by the same mini-batch SGD (``fedge.client.training``)
on the whole federated training pool, the federated model comes from
``fedge-sim`` with the task's recommended overrides (``RECIPES``, a non-IID
partition). Both are scored on the task's central test split, for each seed, and
reported as means::

    python -m bench.ceiling                 # both tasks, seeds 0 1 2
    python -m bench.ceiling --task har --seeds 0

writes ``bench/results/ceiling.json`` (accuracies per seed, means, the gap in
percentage points, wall seconds, and the exact ``fedge-sim`` command).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console

from fedge.client.train_config import TrainConfig
from fedge.client.training import train
from fedge.simulations.experiment import run_experiment
from fedge.conf.schema import register_configs
from fedge.tasks.base import evaluate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RESULTS = Path(__file__).resolve().parent / "results" / "ceiling.json"


@dataclass(frozen=True)
class Recipe:
    """A task's federated overrides and its central training budget."""

    overrides: tuple[str, ...]
    central_epochs: int
    central_lr: float


RECIPES = {
    "har": Recipe(
        ("task=har", "partition=natural", "num_clients=10", "strategy=fedavgm", "client.lr=0.02", "rounds=60"),
        central_epochs=40,
        central_lr=0.01,
    ),
    "image": Recipe(
        ("task=image", "partition=dirichlet", "partition.alpha=0.5", "client.lr=0.01", "rounds=30"),
        central_epochs=15,
        central_lr=0.01,
    ),
}


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def central_accuracy(cfg, epochs: int, lr: float) -> float:
    """Test accuracy of the task's model trained centrally for ``epochs`` on all training data."""
    task = instantiate(cfg.task)
    data = task.load()
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    settings = TrainConfig(**{**dict(cfg.client), "lr": lr, "local_epochs": epochs, "local_steps": 0, "prox_mu": 0.0})
    train(model, task, data.train, settings, np.random.default_rng(cfg.seed))
    return evaluate(model, task, data.test)[1]


def measure(name: str, seeds: list[int]) -> dict:
    recipe = RECIPES[name]
    central, federated, wall = [], [], {"central_s": 0.0, "federated_s": 0.0}
    for seed in seeds:
        cfg = compose_cfg([*recipe.overrides, f"seed={seed}", "progress=false"])
        start = time.perf_counter()
        central.append(central_accuracy(cfg, recipe.central_epochs, recipe.central_lr))
        wall["central_s"] += time.perf_counter() - start
        start = time.perf_counter()
        outcome = run_experiment(cfg, console=Console(file=io.StringIO()))
        federated.append(outcome.result.final.accuracy)
        wall["federated_s"] += time.perf_counter() - start
        print(f"{name} seed {seed}: central {central[-1]:.4f}  federated {federated[-1]:.4f}", flush=True)
    gap = 100 * (float(np.mean(central)) - float(np.mean(federated)))
    return {
        "command": "fedge-sim " + " ".join(recipe.overrides),
        "central": {"epochs": recipe.central_epochs, "lr": recipe.central_lr, "accuracy": central, "mean": float(np.mean(central))},
        "federated": {"accuracy": federated, "mean": float(np.mean(federated))},
        "seeds": seeds,
        "gap_pp": gap,
        "within_3pp": gap <= 3.0,
        **{k: round(v, 1) for k, v in wall.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(RECIPES), action="append", help="task(s) to measure (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    register_configs()
    torch.set_num_threads(1)  # as in every simulated client; oversubscribed threads crawl on a busy machine
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.task or sorted(RECIPES):
        results[name] = measure(name, args.seeds)
        r = results[name]
        print(f"{name}: ceiling {r['central']['mean']:.4f}  federated {r['federated']['mean']:.4f}  gap {r['gap_pp']:+.2f} pp")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The ``fedge-sim`` application: what its command line runs (:mod:`fedge.simulations.sim_cli`).

``fedge-sim`` composes ``conf/config.yaml`` with the command line's overrides, checks
them before anything is written (:mod:`fedge.conf.cli`), runs
:func:`fedge.simulations.experiment.run_experiment` in the Hydra output directory and,
for a single run, writes its ``fedge-report``.

``--help`` and the configuration checks import neither torch nor the datasets (the
experiment and the report are imported when a job runs), so they answer in a fraction of
the time ``import torch`` takes (``bench/startup.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedge.conf.build import ConfigError, build_strategy
from fedge.conf.checks import check_strategy
from fedge.conf.cli import HydraApp
from fedge.conf.schema import register_configs
from fedge.simulations.experiment_checks import check_experiment
from fedge.simulations import fork_server

register_configs()


def job(cfg: DictConfig) -> float:
    from fedge.server.federation import RoundRecord
    from fedge.simulations.experiment import run_experiment  # datasets (torch where the server needs it): only for a job
    from fedge.simulations.report import make_report, start_warm_up

    def warm_report(record: RoundRecord) -> None:
        if record.round == 1:  # the workers are warm: matplotlib's one-off costs beside the rounds, not after them
            start_warm_up()

    hydra_cfg = HydraConfig.get()
    outcome = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir), on_round=warm_report)
    if hydra_cfg.mode == RunMode.RUN and outcome.results_path is not None:  # a sweep reports at its end
        print(f"report: {make_report([outcome.results_path.parent])}")
    return outcome.result.final_accuracy


def prepare(cfg: DictConfig) -> None:
    """Start the worker processes' fork server now (``backend=local`` with workers): it
    imports torch and the task's module on another core while this process composes the
    run and imports the experiment (:mod:`fedge.simulations.fork_server`). Not this
    program's ``__main__`` (the console script): the task travels by its config's
    ``_target_``, nothing of ``__main__`` does."""
    fork_server.start_for(cfg, with_main=False)


def check(cfg: DictConfig) -> None:
    import flwr.common.logger  # noqa: F401  (Flower sets its logger's level when imported: import it first)

    logging.getLogger("flwr").setLevel(logging.INFO if cfg.verbose else logging.ERROR)
    check_experiment(cfg)
    check_strategy(cfg)
    build_strategy(cfg)


APP = HydraApp(
    prog="fedge-sim",
    job=job,
    summary="Run a federated-learning experiment on this machine: simulated clients train "
            "the task's model on their partitions, and a Flower strategy aggregates their "
            "(optionally compressed) updates round by round.",
    examples=[
        "fedge-sim strategy=fedadam partition=iid num_clients=20 rounds=5",
        "fedge-sim task=har partition=natural compression=topk device=phone",
        "fedge-sim -m compression=none,fp16,topk     # one report comparing 3 runs",
    ],
    writes="results.json, final_model.npz, report.md and plots",
    knobs=["client.lr", "client.local_epochs", "strategy.fraction_train", "partition.alpha"],
    config_errors=(ConfigError,),
    check=check,
    prepare=prepare,
)


"""``fedge-sim``: the Hydra entry point for one-machine federations.

``fedge-sim`` composes ``conf/config.yaml`` with the command line's overrides, runs
:func:`fedge.simulations.experiment.run_experiment` in the Hydra output directory and,
for a single run, writes its ``fedge-report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedge.conf.build import ConfigError
from fedge.conf.schema import register_configs
from fedge.simulations.experiment import run_experiment
from fedge.simulations.report import make_report


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        outcome = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir))
    except ConfigError as exc:
        print(f"fedge-sim: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    if hydra_cfg.mode == RunMode.RUN and outcome.results_path is not None:  # a sweep reports at its end
        print(f"report: {make_report([outcome.results_path.parent])}")
    return outcome.result.final.accuracy


def main() -> None:
    """Console entry point (``fedge-sim``)."""
    _hydra_main()


if __name__ == "__main__":
    main()

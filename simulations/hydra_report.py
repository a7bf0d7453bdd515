"""A Hydra callback that writes one ``fedge-report`` for a whole multirun sweep.

Registered in ``conf/config.yaml`` (``hydra.callbacks.report``): when
``fedge-sim -m ...`` ends, the sweep directory gets ``report.md`` and the plots
comparing every job (see :mod:`fedge.simulations.report`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedge.simulations.report import make_report

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """``on_multirun_end``: report on every run below the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()  # printed absolute, as a single run's results: line
        try:
            report = make_report([sweep_dir])
        except (FileNotFoundError, ValueError) as exc:  # e.g. every job failed
            print(f"fedge-sim: no sweep report: {exc}", file=sys.stderr)
            return
        print(f"sweep report: {report}")

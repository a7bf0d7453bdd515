"""Dashboards of a run: TensorBoard event files and MLflow runs (the ``logger`` group).

Off by default: nothing is logged, written or sent beyond ``results.json``, and neither
package is imported (the settings are read and checked by
:mod:`fedge.conf.logger_settings`, which imports neither). An override switches each
on, for ``fedge-sim`` and ``fedge-server`` alike::

    fedge-sim logger=tensorboard                 # <output dir>/tensorboard/events.out.tfevents.*
    fedge-sim logger=mlflow                      # MLflow's file store in <output dir>/mlruns
    fedge-sim 'logger=[tensorboard,mlflow]'      # both

Every round's :class:`~fedge.server.federation.RoundRecord` becomes one point per
numeric field, step = round (round 0 is the initial model): ``accuracy`` and ``loss``
(central test split), ``uplink_bytes``, ``downlink_bytes``, ``wall_s``, ``replies``,
``failures``, ``dropped``; with device profiles ``sim_round_s`` (simulated seconds),
``energy_j``, ``stragglers``, ``unavailable``; ``epsilon`` in DP runs. Fields a round
does not have (``None``: no device profiles, round 0's simulated time) are left out, not
logged as zero. ``train_loss`` and ``federated_accuracy`` come from Flower's ``Result``
after the last round and are logged then, with their rounds as steps.

Reused, not rewritten: torch's ``SummaryWriter`` (:mod:`torch.utils.tensorboard`, which
writes TensorBoard's own event-file format with the ``tensorboard`` package) and
MLflow's ``MlflowClient``. Written here is only the mapping from a round's record to
metric points and the choice of where they go.

MLflow's default store is its file store in the run's output directory. MLflow 3 keeps
that backend in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
set; fedge sets that variable (when unset) for the file stores it opens, and
``MLFLOW_DISABLE_TELEMETRY`` (when unset) so that MLflow reports nothing to anyone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from fedge.conf.logger_settings import check_logger, enabled, mlflow_tracking_uri
from fedge.server.federation import FederationResult, RoundRecord

#: Record fields that are not metrics.
NOT_METRICS = ("round", "abandoned")
#: Record fields known only after the last round (from Flower's Result).
LATE_METRICS = ("train_loss", "federated_accuracy")
#: MLflow accepts at most this many params per log_batch call.
MLFLOW_BATCH_PARAMS = 100
#: ... and values up to this many characters.
MLFLOW_PARAM_CHARS = 6000


def round_metrics(record: RoundRecord, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """The numeric fields of ``record`` that it has (``None`` left out), by field name;
    only ``names`` if given."""
    values = asdict(record)
    wanted = names or tuple(f.name for f in fields(RoundRecord) if f.name not in NOT_METRICS)
    return {name: float(values[name]) for name in wanted if isinstance(values[name], (int, float)) and not isinstance(values[name], bool)}


class Dashboard(Protocol):
    """Where a run's metric points go."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` at round ``step``."""

    def close(self, failed: bool) -> None:
        """Flush and close; ``failed`` when the run stopped with an error."""


class TensorBoardDashboard:
    """Scalars into TensorBoard event files under ``log_dir`` (torch's ``SummaryWriter``)."""

    def __init__(self, log_dir: Path, config_yaml: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", f"```yaml\n{config_yaml}```", global_step=0)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()  # a live `tensorboard --logdir` sees each round as it ends

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowDashboard:
    """One MLflow run: the resolved config as params (and ``config.yaml``), metrics per round."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, config: Mapping[str, Any], config_yaml: str) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
        if tracking_uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
        self.run_id: str = self.client.create_run(experiment_id, run_name=run_name or None).info.run_id
        params = [Param(k, v[:MLFLOW_PARAM_CHARS]) for k, v in flatten(config).items()]
        for start in range(0, len(params), MLFLOW_BATCH_PARAMS):
            self.client.log_batch(self.run_id, params=params[start : start + MLFLOW_BATCH_PARAMS])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        stamp = int(time.time() * 1000)
        points = [self._metric(name, value, stamp, step) for name, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=points)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (lists as their text)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Dashboards:
    """The dashboards a run's ``logger`` settings ask for; call it with each round's record.

    A context manager: leaving it closes every dashboard (an MLflow run ends ``FAILED``
    when the run raised). :meth:`finish` adds the metrics known only at the end.
    """

    def __init__(self, dashboards: list[Dashboard]) -> None:
        self.dashboards = dashboards

    def __call__(self, record: RoundRecord) -> None:
        metrics = round_metrics(record)
        for dashboard in self.dashboards:
            dashboard.log(record.round, metrics)

    def finish(self, result: FederationResult) -> None:
        """Log each round's ``train_loss`` and ``federated_accuracy`` (known after the last round)."""
        for record in result.rounds:
            late = round_metrics(record, LATE_METRICS)
            if late:
                for dashboard in self.dashboards:
                    dashboard.log(record.round, late)

    def __enter__(self) -> Dashboards:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for dashboard in self.dashboards:
            dashboard.close(failed=kind is not None)


def also(first: Callable[[RoundRecord], None] | None, second: Callable[[RoundRecord], None]) -> Callable[[RoundRecord], None]:
    """An ``on_round`` hook calling ``first`` (if any), then ``second``."""
    if first is None:
        return second
    hook = first

    def both(record: RoundRecord) -> None:
        hook(record)
        second(record)

    return both


def open_dashboards(cfg: DictConfig, out_dir: Path | None) -> Dashboards:
    """The dashboards ``cfg.logger`` switches on, writing under ``out_dir`` (default: the
    working directory). None switched on: an empty :class:`Dashboards`, nothing imported."""
    names = enabled(cfg)
    if not names:
        return Dashboards([])
    check_logger(cfg)
    logger = cfg.logger
    out_dir = out_dir if out_dir is not None else Path.cwd()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    container: dict[str, Any] = {str(k): v for k, v in resolved.items()}
    config_yaml = OmegaConf.to_yaml(OmegaConf.create(container))
    opened: list[Dashboard] = []
    if "tensorboard" in names:
        opened.append(TensorBoardDashboard(out_dir / logger.tensorboard.dir, config_yaml))
    if "mlflow" in names:
        run_name = logger.mlflow.run_name or f"{out_dir.parent.name}/{out_dir.name}"
        opened.append(MlflowDashboard(mlflow_tracking_uri(logger.mlflow.tracking_uri, out_dir), logger.mlflow.experiment,
                                      run_name, container, config_yaml))
    return Dashboards(opened)

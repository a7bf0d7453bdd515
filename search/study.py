"""The search loop: an optuna multi-objective study whose every trial is a real federation.

Objectives: the final global model's test accuracy (maximised) and the int8 ONNX file's
size in kB or the device latency estimate in ms (minimised). Constraints: the device
budget (:mod:`fedge.search.budget`), one ``Trial.set_constraint`` per limit (optuna 5: a
trial is feasible when every ``need / limit - 1`` is <= 0), so NSGA-II ranks feasible
trials first and TPE models feasibility; infeasible trials are recorded with their
reasons and never reported as the answer. The answer is the feasible trial of highest
accuracy (ties: the smaller second objective); the Pareto front is optuna's
``best_trials`` (feasible trials only).

Why optuna directly and not Hydra's Optuna sweeper (``hydra-optuna-sweeper``): its
newest release (1.3.0) requires ``optuna>=2.10,<3`` (from 2021; it would downgrade our optuna 5 and its
constraint handling: per-trial constraints, ``best_trials`` that keeps only feasible
trials), and a sweeper job returns only objective values, so the budget could not reach
the sampler.
Each trial here composes the same Hydra config ``fedge-sim`` does (Hydra's Compose API
on ``conf/config.yaml``), so a trial is reproduced exactly by the ``fedge-sim`` command
recorded with it.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from fedge.conf.build import ConfigError
from fedge.conf.cli import CONF_DIR
from fedge.conf.schema import register_configs
from fedge.search.budget import LIMITS, DeviceBudget, Measured, device_budget
from fedge.search.knobs import KnobRange, SearchConfigError, overrides_for
from fedge.search.settings import SearchSettings
from fedge.simulations.experiment_checks import check_experiment

#: Constraint values of a trial that produced no model (infeasible in every limit).
FAILED = [1.0] * len(LIMITS)


@dataclass
class TrialRecord:
    """One trial: its knobs, the federation it ran, what its model needs and whether it fits."""

    number: int
    knobs: dict[str, Any]
    command: str  # the fedge-sim command that reproduces the federation
    status: str = "complete"  # or "failed" (reason says why)
    reason: str = ""
    accuracy: float | None = None  # final global model, central test split (torch)
    int8_accuracy: float | None = None  # the int8 ONNX model in ONNX Runtime
    int8_kb: float | None = None
    train_ram_kb: float | None = None
    latency_ms: float | None = None  # device estimate: MACs / budget.int8_macs_per_s
    ort_int8_latency_ms: float | None = None  # ONNX Runtime, batch 1, this machine
    params: int | None = None
    macs: int | None = None
    feasible: bool = False
    violations: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + sys of this process and its children during the trial
    run_dir: str = ""


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def compose_federation(overrides: list[str]) -> DictConfig:
    """The fedge-sim config of ``overrides`` (Hydra's Compose API on ``conf/config.yaml``)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def check_federation(settings: SearchSettings, ranges: Mapping[str, KnobRange]) -> None:
    """Compose the shared config with every knob's extreme values and build each task: a knob
    the task does not take, or a value it refuses, fails here, naming the key, before any trial."""
    base = settings.federation_overrides()
    for name, knob in [("federation", None), *ranges.items()]:
        for value in knob.corners() if knob else [None]:
            extra = overrides_for({name: value}) if knob else []
            key = f"space.{name}={value}" if knob else "federation"
            try:
                cfg = compose_federation([*base, *extra])
                check_experiment(cfg)
                instantiate(cfg.task)
            except (HydraException, OmegaConfBaseException, ConfigError, ValueError, TypeError) as exc:
                cause = exc.__cause__ or exc  # hydra's instantiate wraps the task's own ValueError
                text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
                raise SearchConfigError(f"{key}: {text}") from None


def _values(record: TrialRecord, objective: str) -> tuple[float, float]:
    second = record.int8_kb if objective == "int8_kb" else record.latency_ms
    assert record.accuracy is not None and second is not None
    return record.accuracy, second


@dataclass
class Search:
    """One search: its settings, budget and output directory; :meth:`run` runs it."""

    settings: SearchSettings
    out_dir: Path
    log: Callable[[str], None] = print
    records: list[TrialRecord] = field(default_factory=list)
    pareto: list[int] | None = None  # trial numbers on the feasible Pareto front, once the study ends
    ranges: dict[str, KnobRange] = field(init=False)
    budget: DeviceBudget = field(init=False)
    started: float = field(init=False)  # perf_counter() at the start of run()
    cpu_start: float = field(init=False)
    load_start: tuple[float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        self.ranges = self.settings.ranges()
        self.budget = device_budget(self.settings.profile, self.settings.budget)
        self.started, self.cpu_start, self.load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
        check_federation(self.settings, self.ranges)

    def trial(self, trial: optuna.Trial) -> tuple[float, float]:
        knobs = {name: r.suggest(trial) for name, r in self.ranges.items()}
        overrides = [*self.settings.federation_overrides(), *overrides_for(knobs), f"seed={self.settings.seed}"]
        run_dir = self.out_dir / "trials" / f"{trial.number:03d}"
        record = TrialRecord(trial.number, knobs, "fedge-sim " + " ".join(overrides), run_dir=str(run_dir))
        self.records.append(record)
        wall, cpu = time.perf_counter(), cpu_seconds()
        measured: Measured | None = None
        try:
            measured = self._run(record, overrides, run_dir)
        except (ConfigError, ValueError, RuntimeError) as exc:  # a knob combination the federation refuses
            record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            record.wall_s, record.cpu_s = time.perf_counter() - wall, cpu_seconds() - cpu
            self._save()
        if measured is None:
            for key, value in zip(LIMITS, FAILED):
                trial.set_constraint(key, value)
            self.log(f"trial {trial.number}: failed ({record.reason})")
            raise optuna.TrialPruned(record.reason)
        for key, value in zip(LIMITS, self.budget.constraints(measured)):
            trial.set_constraint(key, value)  # the samplers rank feasible trials (all <= 0) first
        self.log(f"trial {trial.number}: {knobs} accuracy {record.accuracy:.4f}, int8 {record.int8_kb:.1f} kB, "
                 f"train RAM {record.train_ram_kb:.1f} kB, latency {record.latency_ms:.2f} ms: "
                 f"{'fits' if record.feasible else 'over budget (' + '; '.join(record.violations) + ')'} "
                 f"[{record.wall_s:.0f} s wall, {record.cpu_s:.0f} CPU s]")
        return _values(record, self.settings.objective)

    def _run(self, record: TrialRecord, overrides: list[str], run_dir: Path) -> Measured:
        """Run the federation, export and measure its model; fill ``record``."""
        from fedge.client.train_config import TrainConfig
        from fedge.search.measure import measure_trial
        from fedge.simulations.experiment import run_experiment

        cfg = compose_federation(overrides)
        outcome = run_experiment(cfg, run_dir, console=Console(file=io.StringIO()))
        training = TrainConfig(batch_size=int(cfg.client.batch_size), momentum=float(cfg.client.momentum),
                               checkpointing=bool(cfg.client.checkpointing),
                               checkpoint_segments=int(cfg.client.checkpoint_segments))
        model = measure_trial(run_dir, training, self.settings.latency_samples)
        m = model.measured
        needs = self.budget.needs(m)
        record.accuracy = outcome.result.final_accuracy
        record.int8_accuracy, record.ort_int8_latency_ms = model.int8_accuracy, model.ort_int8_latency_ms
        record.int8_kb, record.train_ram_kb, record.latency_ms = needs["flash_kb"], needs["train_ram_kb"], needs["latency_ms"]
        record.params, record.macs = model.params, m.macs
        record.violations = self.budget.violations(m)
        record.feasible = not record.violations
        return m

    def sampler(self) -> optuna.samplers.BaseSampler:
        """NSGA-II or multi-objective TPE; both read the constraints each trial sets (``Trial.set_constraint``)."""
        s = self.settings
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=s.population, seed=s.seed)
        return optuna.samplers.TPESampler(n_startup_trials=s.population, seed=s.seed, multivariate=True)

    def run(self) -> dict[str, Any]:
        """Run every trial; write and return ``search.json``'s content."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.started, self.cpu_start, self.load_start = time.perf_counter(), cpu_seconds(), os.getloadavg()
        self.records, self.pareto = [], None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(directions=["maximize", "minimize"], sampler=self.sampler(),
                                        study_name=self.settings.name)
            for point in self.settings.enqueue:
                study.enqueue_trial(dict(point))
            study.optimize(self.trial, n_trials=self.settings.trials, catch=())
        self.pareto = sorted(t.number for t in study.best_trials)
        return self._save()

    def _save(self) -> dict[str, Any]:
        result = summarise(self)
        (self.out_dir / "search.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        return result


def summarise(search: Search) -> dict[str, Any]:
    """``search.json``: settings, budget, every trial, the Pareto front, the answer and the cost."""
    s = search.settings
    done = [r for r in search.records if r.status == "complete"]
    fits = [r for r in done if r.feasible]

    def best(records: list[TrialRecord]) -> TrialRecord | None:
        return max(records, key=lambda r: (_values(r, s.objective)[0], -_values(r, s.objective)[1]), default=None)

    answer, unconstrained = best(fits), best(done)
    cpu, wall = cpu_seconds() - search.cpu_start, time.perf_counter() - search.started
    return {
        "name": s.name,
        "settings": asdict(s),
        "objectives": ["accuracy (maximise)", f"{s.objective} (minimise)"],
        "budget": asdict(search.budget),
        "trials": [asdict(r) for r in search.records],
        "pareto": search.pareto,
        "answer": answer.number if answer else None,
        "best_unconstrained": unconstrained.number if unconstrained else None,
        "answer_gap_pp": (100 * ((unconstrained.accuracy or 0) - (answer.accuracy or 0))
                          if answer and unconstrained else None),
        "counts": {"trials": len(search.records), "complete": len(done), "feasible": len(fits),
                   "failed": len(search.records) - len(done)},
        "cost": {"wall_s": wall, "cpu_s": cpu, "cpu_s_per_2_cores": cpu / 2, "cpus": os.cpu_count(),
                 "load_avg_at_start": list(search.load_start),
                 "load_avg_at_end": list(os.getloadavg())},
        "versions": {"optuna": optuna.__version__},
    }

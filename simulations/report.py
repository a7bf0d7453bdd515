"""Plots and a markdown report of fedge-sim runs (the command is ``fedge-report RUN_DIR...``).

Each RUN_DIR is a run's output directory (it holds ``results.json``) or a directory
above several (a Hydra multirun sweep: every ``results.json`` below it is a run). The
report compares all runs given:

- ``accuracy_vs_round.png``: central test accuracy after each round;
- ``accuracy_vs_uplink.png``: the same against cumulative uplink megabytes (what a
  compression codec buys);
- ``clients.png``: bytes each client sent and received over the run, and the
  training seconds each client reported (measured compute on this machine): a bar per
  client, or above ``max_client_bars`` clients their distribution;
- ``clients.csv``: every client's totals, one row per run and client;
- ``accuracy_vs_sim_time.png`` (runs with device profiles, ``device=...``): accuracy
  against cumulative simulated round time (time to accuracy on the simulated fleet);
- ``staleness.png`` (async runs, ``mode=async``): applied updates by staleness
  (:mod:`fedge.simulations.async_report`); an async run's rounds are its aggregation
  steps, so the simulated-time plot shows sync and async runs on one axis;
- ``report.md``: a summary table of all runs, the plots, and per run a table of its
  rounds and one of its clients (with simulated seconds, joules, stragglers and
  offline devices when the run had device profiles); above ``max_client_bars``
  clients, percentiles over the clients and the top ``top_n`` instead.

Speed (the end of every ``fedge-sim`` run writes one): :func:`warm_up` pays matplotlib's
one-off costs (its import, the font cache, the first text drawn), and ``fedge-sim`` calls
it on a thread while the rounds run (:func:`start_warm_up`); where this process holds no
torch (the default run's server process does not: :mod:`fedge.simulations.evaluation_process`),
``clients.png``, the costliest figure, is drawn by a forked child while this process
draws the others (:func:`render`): forking a process whose torch runs threads is not safe.

Runs are labelled by what they are (``digits/fedavg/topk qat8 dev=phone``: task,
strategy, codec, QAT bits, device profiles) and any other config value that differs
between them (``seed=1``). Legends sit below the axes, outside them. Plots use matplotlib's ``Figure`` with the Agg
canvas: no display needed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.simulations import report_clients
from fedge.simulations.report_clients import KB, MAX_CLIENT_BARS, TOP_N
from fedge.simulations.async_report import STALENESS_PLOT, STALENESS_TITLE, async_section, plot_staleness, step_table
from fedge.simulations.robust_report import robust_markdown

MB = 1e6
#: Config keys that never tell runs apart.
IGNORED_KEYS = {"progress", "verbose"}
#: Every client's row, one per run and client (written for every report).
CLIENTS_CSV = "clients.csv"
PLOTS = {
    "accuracy_vs_round": "accuracy vs round",
    "accuracy_vs_uplink": "accuracy vs cumulative uplink MB",
    "clients": "per-client bytes and compute seconds",  # bars, or distributions over many clients
    "accuracy_vs_sim_time": "accuracy vs cumulative simulated round time",
    STALENESS_PLOT: STALENESS_TITLE,
}


@dataclass
class Run:
    """One run's results and the label it carries in the report."""

    path: Path
    results: dict[str, Any]
    label: str = ""

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.results["rounds"]

    @property
    def config(self) -> dict[str, Any]:
        return self.results.get("config", {})

    def cumulative_uplink_mb(self) -> list[float]:
        total, out = 0, []
        for r in self.rounds:
            total += r["uplink_bytes"]
            out.append(total / MB)
        return out

    @property
    def simulated(self) -> bool:
        """Did the run simulate devices (``device=...``)?"""
        return any(r.get("sim_round_s") is not None for r in self.rounds)

    def cumulative_sim_s(self) -> list[float]:
        total, out = 0.0, []
        for r in self.rounds:
            total += r.get("sim_round_s") or 0.0
            out.append(total)
        return out


def find_runs(paths: Iterable[Path | str]) -> list[Path]:
    """Run directories named by ``paths`` (a run directory, or any directory above runs)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / "results.json").is_file():
            found.append(path)
        elif path.is_dir():
            below = sorted(p.parent for p in path.rglob("results.json"))
            if not below:
                raise FileNotFoundError(f"{path}: no results.json in it or below it")
            found.extend(below)
        else:
            raise FileNotFoundError(f"{path}: not a directory")
    return list(dict.fromkeys(found))


def load_runs(paths: Iterable[Path | str]) -> list[Run]:
    """Read every run below ``paths`` and label each by what sets it apart."""
    runs = []
    for run_dir in find_runs(paths):
        try:
            results = json.loads((run_dir / "results.json").read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{run_dir / 'results.json'}: not valid JSON ({exc})") from None
        if not results.get("rounds"):
            raise ValueError(f"{run_dir / 'results.json'}: no rounds recorded")
        runs.append(Run(run_dir, results))
    for run, label in zip(runs, run_labels([r.config for r in runs])):
        run.label = label
    return runs


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _group_name(config: dict[str, Any], group: str) -> str:
    node = config.get(group) or {}
    if "name" in node:
        return str(node["name"])
    if "_target_" in node:
        return str(node["_target_"]).rsplit(".", 1)[-1]
    return ""


#: Groups a label names by their name (task class, strategy class, codec, device file).
NAMED_GROUPS = ("task", "strategy", "compression", "device", "mode")
#: Keys a label shows as ``qat<bits>`` (``a<act_bits>`` when not 8).
QAT_KEYS = ("client.qat.bits", "client.qat.act_bits")


def describe(config: dict[str, Any]) -> str:
    """What a run is, e.g. ``digits/fedavg/topk qat8 dev=mix_wearable_phone_gateway``.

    Task (class name less ``Task``), strategy and compression codec, then the QAT bits
    (``qat4a6``: 4-bit weights, 6-bit activations) and device profiles when set.
    """
    task = _group_name(config, "task").removesuffix("Task").lower()
    strategy = _group_name(config, "strategy").lower()
    parts = ["/".join(n for n in (task, strategy, _group_name(config, "compression")) if n)]
    qat = (config.get("client") or {}).get("qat") or {}
    if qat.get("bits"):
        act = qat.get("act_bits", 8)
        parts.append(f"qat{qat['bits']}" + (f"a{act}" if act != 8 else ""))
    device = _group_name(config, "device")
    if device and device != "none":
        parts.append(f"dev={device}")
    if _group_name(config, "mode") == "async":
        parts.append(f"async K={(config.get('mode') or {}).get('buffer_size')}")
    return " ".join(p for p in parts if p)


def run_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Labels: :func:`describe` of each run, then the other config values that differ between runs.

    A group whose name differs between runs (``compression=none`` vs ``topk``) is told
    apart by :func:`describe` alone; its other keys are not listed.
    """
    flats = [_flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f} - IGNORED_KEYS - set(QAT_KEYS))
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    renamed = {g for g in NAMED_GROUPS if len({_group_name(c, g) for c in configs}) > 1}
    labels = []
    for config, flat in zip(configs, flats):
        extras = [f"{k}={flat.get(k)}" for k in differing if k.split(".", 1)[0] not in renamed]
        labels.append(" ".join([describe(config) or "run", *extras]))
    if len(set(labels)) < len(labels):  # same config twice: tell them apart by position
        labels = [f"{label} #{i}" for i, label in enumerate(labels)]
    return labels


def warm_up() -> None:
    """Import matplotlib's Figure and Agg canvas and draw one small figure with text, so the
    report's first figure pays none of matplotlib's one-off costs (~0.4 s of CPU here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0, 1.0), dpi=10, layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], marker=".", label="warm-up")
    ax.set(xlabel="x", ylabel="y", title="warm-up")
    FigureCanvasAgg(fig).draw()


def start_warm_up() -> threading.Thread:
    """Run :func:`warm_up` on a daemon thread (e.g. while a run's rounds wait on their
    workers); :func:`make_report` waits for it. Returns the thread."""
    global _WARMING
    thread = threading.Thread(target=warm_up, name="fedge-report-warm-up", daemon=True)
    thread.start()
    _WARMING = thread
    return thread


_WARMING: threading.Thread | None = None  # started by start_warm_up, joined before drawing


#: One figure to draw: the function, its arguments (the figure's path among them).
Drawing = tuple[Callable[..., Path], tuple[Any, ...]]


def _draw_all(drawings: Sequence[Drawing]) -> None:
    for draw, args in drawings:
        draw(*args)


def _can_fork() -> bool:
    """Forking this process is safe and available: Linux, no torch (its thread pools) and
    no thread but this one (a lock another thread holds would stay held in the child)."""
    return sys.platform.startswith("linux") and "torch" not in sys.modules and threading.active_count() == 1


def render(drawings: Sequence[Drawing], parallel: bool = True) -> None:
    """Draw every figure of ``drawings``: the first in a forked child (when ``parallel`` and
    :func:`_can_fork`), the others here meanwhile; else all here, in order. A child that
    fails raises ``RuntimeError`` naming its figure (its traceback is on stderr)."""
    if _WARMING is not None:
        _WARMING.join()
    if not (parallel and len(drawings) > 1 and _can_fork()):
        _draw_all(drawings)
        return
    child = mp.get_context("fork").Process(target=_draw_all, args=(drawings[:1],), name="fedge-report-figure", daemon=True)
    child.start()
    try:
        _draw_all(drawings[1:])
    finally:
        child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"drawing {drawings[0][1][1]} failed (exit code {child.exitcode})")


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _legend_below(fig: Any, ax: Any, runs: int) -> None:
    """One legend under the axes, outside them: it covers no curve and grows the figure, not the plot.

    One column for up to 3 runs (labels can be long), two above; saved with
    ``bbox_inches="tight"`` so nothing is clipped.
    """
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=1 if runs <= 3 else 2, fontsize="small")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_accuracy(
    runs: Sequence[Run], path: Path, key: str, xlabel: str, x_of: Callable[[Run], Sequence[float]], xscale: str = "linear"
) -> Path:
    """Central test accuracy of each run (one line each) against ``x_of(run)`` (one x per round record).

    ``key`` names the plot in :data:`PLOTS` (its title). Runs without the x values
    (``x_of`` returns ``[]``) are left out.
    """
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        xs = x_of(run)
        if xs:  # rounds not evaluated (eval_every) are left out: the line joins the evaluated ones
            shown = [(x, r["accuracy"]) for x, r in zip(xs, run.rounds) if r["accuracy"] is not None]
            ax.plot([x for x, _ in shown], [a for _, a in shown], marker=".", label=run.label)
    ax.set(xlabel=xlabel, ylabel="central test accuracy", title=PLOTS[key])
    if xscale == "symlog":
        ax.set_xscale("symlog", linthresh=0.01)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax, len(runs))
    return _save(fig, path)


def plot_accuracy_vs_round(runs: Sequence[Run], path: Path) -> Path:
    return plot_accuracy(runs, path, "accuracy_vs_round", "round", lambda run: [r["round"] for r in run.rounds])


def plot_accuracy_vs_uplink(runs: Sequence[Run], path: Path) -> Path:
    return plot_accuracy(runs, path, "accuracy_vs_uplink", "cumulative uplink (MB, serialised updates)",
                         Run.cumulative_uplink_mb, xscale="symlog")


def plot_accuracy_vs_sim_time(runs: Sequence[Run], path: Path) -> Path:
    return plot_accuracy(runs, path, "accuracy_vs_sim_time", "cumulative simulated round time (s, device profiles)",
                         lambda run: run.cumulative_sim_s() if run.simulated else [])


def clients_figure(runs: Sequence[Run], max_client_bars: int = MAX_CLIENT_BARS) -> Any:
    """The figure of ``clients.png``: one bar per client, or the distributions over clients
    when a run has more than ``max_client_bars`` (:mod:`fedge.simulations.report_clients`)."""
    if report_clients.is_large(runs, max_client_bars):
        fig = _figure(8.0, 9.0)
        report_clients.plot_distributions(fig, runs, _legend_below)
    else:
        fig = _figure(9.0, 8.0)
        report_clients.plot_bars(fig, runs, _legend_below)
    return fig


def plot_clients(runs: Sequence[Run], path: Path, max_client_bars: int = MAX_CLIENT_BARS) -> Path:
    """Write :func:`clients_figure` to ``path``."""
    return _save(clients_figure(runs, max_client_bars), path)


def _summary_row(run: Run, simulated: bool) -> list[str]:
    trained = run.rounds[1:] if run.rounds[0]["round"] == 0 else run.rounds
    row = [
        run.label,
        str(len(trained)),
        f"{run.rounds[-1]['accuracy']:.4f}",
        f"{max(r['accuracy'] for r in run.rounds if r['accuracy'] is not None):.4f}",
        f"{sum(r['uplink_bytes'] for r in trained) / MB:.3f}",
        f"{sum(r['downlink_bytes'] for r in trained) / MB:.3f}",
        str(sum(r.get("failures", 0) + r.get("dropped", 0) for r in trained)),
        f"{sum(r['wall_s'] for r in trained):.1f}",
    ]
    if simulated:
        row += simulated_cells(trained) if run.simulated else ["-"] * 4
    return row


def simulated_cells(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Simulated seconds, joules, stragglers and offline devices, summed over ``rounds``
    (round records as dicts, as in results.json; also the summary table of ``fedge-sim``)."""
    return [
        f"{sum(r.get('sim_round_s') or 0.0 for r in rounds):.2f}",
        f"{sum(r.get('energy_j') or 0.0 for r in rounds):.3f}",
        str(sum(r.get("stragglers", 0) for r in rounds)),
        str(sum(r.get("unavailable", 0) for r in rounds)),
    ]


SIMULATED_COLUMNS = ["sim s", "energy J", "stragglers", "offline"]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(
    runs: Sequence[Run], images: dict[str, Path], out_dir: Path, max_client_bars: int = MAX_CLIENT_BARS, top_n: int = TOP_N
) -> str:
    """The report text; image and run paths are relative to ``out_dir``. Runs with more than
    ``max_client_bars`` clients get percentiles and the ``top_n`` clients instead of a row
    per client (all rows: ``clients.csv``)."""
    large = report_clients.is_large(runs, max_client_bars)
    csv_name = CLIENTS_CSV
    parts = ["# fedge report", ""]
    simulated = any(r.simulated for r in runs)
    header = ["run", "rounds", "final acc", "best acc", "uplink MB", "downlink MB", "failed", "wall s"]
    parts.append(_table(header + (SIMULATED_COLUMNS if simulated else []), (_summary_row(r, simulated) for r in runs)))
    parts.append("")
    for key, image in images.items():
        parts += [f"![{PLOTS[key]}]({os.path.relpath(image, out_dir)})", ""]
    for run in runs:
        results = os.path.relpath(run.path / "results.json", out_dir)
        parts += [f"## {run.label}", "", f"Run: [{results}]({results})", ""]
        header = ["round", "accuracy", "loss", "uplink KB", "downlink KB", "replies", "failures", "wall s"]
        parts.append(
            _table(
                header + (SIMULATED_COLUMNS if run.simulated else []),
                (
                    [
                        str(r["round"]),
                        "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
                        "-" if r["loss"] is None else f"{r['loss']:.4f}",
                        f"{r['uplink_bytes'] / KB:.1f}",
                        f"{r['downlink_bytes'] / KB:.1f}",
                        str(r.get("replies", "")),
                        str(r.get("failures", "")),
                        f"{r['wall_s']:.2f}",
                    ]
                    + (simulated_cells([r]) if run.simulated else [])
                    for r in run.rounds
                ),
            )
        )
        parts += robust_markdown(run.results)  # attacks and robust-rule decisions, if any
        parts += report_clients.markdown_section(run, large, top_n, csv_name, _table)
        parts += step_table(run.results)
        parts.append("")
    return "\n".join(parts)


def make_report(
    paths: Iterable[Path | str],
    out_dir: Path | str | None = None,
    *,
    max_client_bars: int = MAX_CLIENT_BARS,
    top_n: int = TOP_N,
) -> Path:
    """Write the plots, ``clients.csv`` and ``report.md`` for the runs below ``paths``;
    return the report path.

    ``out_dir`` defaults to the one directory given, or the common parent of several.
    Above ``max_client_bars`` clients in a run the client plot and tables show
    distributions and the ``top_n`` clients (:mod:`fedge.simulations.report_clients`).
    """
    if max_client_bars < 0 or top_n < 1:
        raise ValueError(f"max_client_bars must be >= 0 and top_n >= 1, got {max_client_bars} and {top_n}")
    dirs = [Path(p) for p in paths]
    if not dirs:
        raise ValueError("no run directory given")
    runs = load_runs(dirs)
    if out_dir is None:
        out_dir = dirs[0] if len(dirs) == 1 else Path(os.path.commonpath([str(p.resolve()) for p in dirs]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {key: out_dir / f"{key}.png" for key in ("accuracy_vs_round", "accuracy_vs_uplink", "clients")}
    drawings: list[Drawing] = [  # the costliest first: drawn by a child beside the others where render() can fork
        (plot_clients, (runs, images["clients"], max_client_bars)),
        (plot_accuracy_vs_round, (runs, images["accuracy_vs_round"])),
        (plot_accuracy_vs_uplink, (runs, images["accuracy_vs_uplink"])),
    ]
    if any(run.simulated for run in runs):
        images["accuracy_vs_sim_time"] = out_dir / "accuracy_vs_sim_time.png"
        drawings.append((plot_accuracy_vs_sim_time, (runs, images["accuracy_vs_sim_time"])))
    if any(async_section(run.results) for run in runs):
        images[STALENESS_PLOT] = out_dir / "staleness.png"
        drawings.append((plot_staleness, (runs, images[STALENESS_PLOT])))
    render(drawings)
    report_clients.write_csv(runs, out_dir / CLIENTS_CSV)
    report = out_dir / "report.md"
    report.write_text(markdown(runs, images, out_dir, max_client_bars, top_n))
    return report

"""Plots and a markdown report of fedge-sim runs (the command is ``fedge-report RUN_DIR...``).

Each RUN_DIR is a run's output directory (it holds ``results.json``) or a directory
above several (a Hydra multirun sweep: every ``results.json`` below it is a run). The
report compares all runs given:

- ``accuracy_vs_round.png``: central test accuracy after each round;
- ``accuracy_vs_uplink.png``: the same against cumulative uplink megabytes (what a
  compression codec buys);
- ``clients.png``: bytes each client sent and received over the run, and the
  training seconds each client reported (measured compute on this machine);
- ``accuracy_vs_sim_time.png`` (runs with device profiles, ``device=...``): accuracy
  against cumulative simulated round time (time to accuracy on the simulated fleet);
- ``report.md``: a summary table of all runs, the plots, and per run a table of its
  rounds and one of its clients (with simulated seconds, joules, stragglers and
  offline devices when the run had device profiles).

Runs are labelled by what differs between their configs (``compression=topk``,
``strategy=FedProx``, ``seed=1``). Plots use matplotlib's ``Figure`` with the Agg
canvas: no display needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1e6
KB = 1e3
#: Config keys that never tell runs apart.
IGNORED_KEYS = {"progress", "verbose"}
PLOTS = {
    "accuracy_vs_round": "accuracy vs round",
    "accuracy_vs_uplink": "accuracy vs cumulative uplink MB",
    "clients": "per-client bytes and compute seconds",
    "accuracy_vs_sim_time": "accuracy vs cumulative simulated round time",
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
    node = config.get(group, {})
    if "name" in node:
        return str(node["name"])
    if "_target_" in node:
        return str(node["_target_"]).rsplit(".", 1)[-1]
    return ""


def run_labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Short labels: the config values that differ between runs, a group by its name."""
    flats = [_flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f} - IGNORED_KEYS)
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]
    labels = []
    for config, flat in zip(configs, flats):
        parts: dict[str, str] = {}
        for key in differing:
            group = key.split(".", 1)[0]
            name = _group_name(config, group) if "." in key else ""
            if name:
                parts.setdefault(group, f"{group}={name}")
            else:
                parts.setdefault(key, f"{key}={flat.get(key)}")
        labels.append(", ".join(parts.values()))
    if len(configs) <= 1 or not differing:
        labels = [
            " / ".join(n for n in (_group_name(c, "task"), _group_name(c, "strategy"), _group_name(c, "compression")) if n)
            or f"run {i}"
            for i, c in enumerate(configs)
        ]
    if len(set(labels)) < len(labels):  # same config twice: tell them apart by position
        labels = [f"{label} #{i}" for i, label in enumerate(labels)]
    return labels


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_accuracy_vs_round(runs: Sequence[Run], path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        ax.plot([r["round"] for r in run.rounds], [r["accuracy"] for r in run.rounds], marker=".", label=run.label)
    ax.set(xlabel="round", ylabel="central test accuracy", title=PLOTS["accuracy_vs_round"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def plot_accuracy_vs_uplink(runs: Sequence[Run], path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        ax.plot(run.cumulative_uplink_mb(), [r["accuracy"] for r in run.rounds], marker=".", label=run.label)
    ax.set(xlabel="cumulative uplink (MB, serialised updates)", ylabel="central test accuracy")
    ax.set_title(PLOTS["accuracy_vs_uplink"])
    ax.set_xscale("symlog", linthresh=0.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def plot_accuracy_vs_sim_time(runs: Sequence[Run], path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    for run in runs:
        if run.simulated:
            ax.plot(run.cumulative_sim_s(), [r["accuracy"] for r in run.rounds], marker=".", label=run.label)
    ax.set(xlabel="cumulative simulated round time (s, device profiles)", ylabel="central test accuracy")
    ax.set_title(PLOTS["accuracy_vs_sim_time"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def plot_clients(runs: Sequence[Run], path: Path) -> Path:
    fig = _figure(9.0, 8.0)
    up_ax, down_ax, compute_ax = fig.subplots(3, 1, sharex=True)
    nodes = sorted({int(n) for run in runs for n in run.results.get("clients", {})})
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        clients = run.results.get("clients", {})
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(nodes))]
        per_node = [clients.get(str(n), {}) for n in nodes]
        up_ax.bar(xs, [c.get("uplink_bytes", 0) / KB for c in per_node], width, label=run.label)
        down_ax.bar(xs, [c.get("downlink_bytes", 0) / KB for c in per_node], width, label=run.label)
        compute_ax.bar(xs, [c.get("compute_s", 0.0) for c in per_node], width, label=run.label)
    up_ax.set(ylabel="uplink KB (log)", yscale="log", title="bytes each client sent over the run (serialised updates)")
    sent = [b.get_height() for b in up_ax.patches if b.get_height() > 0]
    if sent:
        up_ax.set_ylim(min(sent) / 3, max(sent) * 3)
    down_ax.set(ylabel="downlink KB", title="bytes each client received (serialised tasks)")
    compute_ax.set(
        xlabel="client (node id)",
        ylabel="seconds",
        title="training seconds per client (measured on this machine; simulated device time: report.md)",
    )
    compute_ax.set_xticks(range(len(nodes)), [str(n) for n in nodes], fontsize="small")
    for ax in (up_ax, down_ax, compute_ax):
        ax.grid(alpha=0.3, axis="y")
    if nodes:
        fig.legend(*up_ax.get_legend_handles_labels(), loc="outside upper center", ncols=min(len(runs), 4), fontsize="small")
    fig.savefig(path)
    return path


def _summary_row(run: Run, simulated: bool) -> list[str]:
    trained = run.rounds[1:] if run.rounds[0]["round"] == 0 else run.rounds
    row = [
        run.label,
        str(len(trained)),
        f"{run.rounds[-1]['accuracy']:.4f}",
        f"{max(r['accuracy'] for r in run.rounds):.4f}",
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


def _client_row(node: str, c: dict[str, Any], profiled: bool) -> list[str]:
    row = [node, f"{c.get('uplink_bytes', 0) / KB:.1f}", f"{c.get('downlink_bytes', 0) / KB:.1f}",
           str(c.get("replies", 0)), str(c.get("failures", 0)), f"{c.get('compute_s', 0.0):.2f}"]
    if profiled:
        row += [str(c.get("profile", "-")), f"{c.get('sim_busy_s', 0.0):.2f}", f"{c.get('energy_j', 0.0):.3f}",
                str(c.get("stragglers", 0)), str(c.get("unavailable", 0))]
    return row


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(runs: Sequence[Run], images: dict[str, Path], out_dir: Path) -> str:
    """The report text; image and run paths are relative to ``out_dir``."""
    parts = ["# fedge report", ""]
    simulated = any(r.simulated for r in runs)
    header = ["run", "rounds", "final acc", "best acc", "uplink MB", "downlink MB", "failed", "wall s"]
    parts.append(_table(header + (SIMULATED_COLUMNS if simulated else []), (_summary_row(r, simulated) for r in runs)))
    parts.append("")
    for key, image in images.items():
        parts += [f"![{PLOTS[key]}]({os.path.relpath(image, out_dir)})", ""]
    for run in runs:
        parts += [f"## {run.label}", "", f"`{os.path.relpath(run.path, out_dir)}`", ""]
        header = ["round", "accuracy", "loss", "uplink KB", "downlink KB", "replies", "failures", "wall s"]
        parts.append(
            _table(
                header + (SIMULATED_COLUMNS if run.simulated else []),
                (
                    [
                        str(r["round"]),
                        f"{r['accuracy']:.4f}",
                        f"{r['loss']:.4f}",
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
        clients = run.results.get("clients", {})
        if clients:
            profiled = any("profile" in c for c in clients.values())
            header = ["client", "uplink KB", "downlink KB", "replies", "failures", "compute s"]
            if profiled:
                header += ["profile", "sim s", "energy J", "stragglers", "offline"]
            parts += ["", "Per client (whole run):", ""]
            parts.append(
                _table(header, (_client_row(n, c, profiled) for n, c in sorted(clients.items(), key=lambda item: int(item[0]))))
            )
        parts.append("")
    return "\n".join(parts)


def make_report(paths: Iterable[Path | str], out_dir: Path | str | None = None) -> Path:
    """Write the plots and ``report.md`` for the runs below ``paths``; return the report path.

    ``out_dir`` defaults to the one directory given, or the common parent of several.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no run directory given")
    runs = load_runs(paths)
    if out_dir is None:
        out_dir = paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {
        "accuracy_vs_round": plot_accuracy_vs_round(runs, out_dir / "accuracy_vs_round.png"),
        "accuracy_vs_uplink": plot_accuracy_vs_uplink(runs, out_dir / "accuracy_vs_uplink.png"),
        "clients": plot_clients(runs, out_dir / "clients.png"),
    }
    if any(run.simulated for run in runs):
        images["accuracy_vs_sim_time"] = plot_accuracy_vs_sim_time(runs, out_dir / "accuracy_vs_sim_time.png")
    report = out_dir / "report.md"
    report.write_text(markdown(runs, images, out_dir))
    return report

"""The per-client part of a report, sized to the federation: bars for a few clients,
distributions and the top N for many, and every client's row in ``clients.csv``.

- Up to ``max_client_bars`` clients in every run: ``clients.png`` has one bar per
  client and run (uplink KB, downlink KB, training seconds) and ``report.md`` a table of
  every client.
- More (10,000 simulated devices): one bar per client is unreadable and takes minutes
  to draw, so ``clients.png`` shows each quantity's distribution over the clients (the
  share of clients at or below a value, one curve per run, log x axis) and
  ``report.md`` per run its percentiles and the ``top_n`` clients by uplink bytes and by
  training seconds (and by joules with device profiles).
- Always: ``clients.csv`` in the report directory, one row per run and client with the
  raw numbers (bytes, seconds, joules), for any other view.

The clients of a run are those ``results.json`` lists: every node that was sent a task.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

KB = 1e3
#: Above this many clients in a run, the report shows distributions and the top N instead of one bar per client.
MAX_CLIENT_BARS = 50
#: Clients listed per "top" table of a large run.
TOP_N = 10
#: The panels of ``clients.png``: (per-client field, scale to KB, y label, title). All on log scales.
CLIENT_PANELS = (
    ("uplink_bytes", 1 / KB, "uplink KB", "bytes each client sent over the run (serialised updates)"),
    ("downlink_bytes", 1 / KB, "downlink KB", "bytes each client received (serialised tasks)"),
    ("compute_s", 1.0, "seconds",
     "training seconds per client (measured on this machine; simulated device time: report.md)"),
)
#: Columns of ``clients.csv`` after ``run`` and ``client``; the device columns only when a run had profiles.
CSV_FIELDS = ("uplink_bytes", "downlink_bytes", "tasks", "replies", "failures", "compute_s")
DEVICE_FIELDS = ("profile", "sim_busy_s", "energy_j", "stragglers", "unavailable")
#: Percentiles shown for a large run.
PERCENTILES = (0, 50, 90, 99, 100)


class ClientRun(Protocol):
    """What this module reads of a run (:class:`fedge.simulations.report.Run`)."""

    label: str
    results: dict[str, Any]


def clients_of(run: ClientRun) -> list[tuple[str, dict[str, Any]]]:
    """The run's clients as ``(node id, totals)``, in order of node id."""
    clients: dict[str, dict[str, Any]] = run.results.get("clients", {})
    return sorted(clients.items(), key=lambda item: int(item[0]))


def is_large(runs: Sequence[ClientRun], max_client_bars: int) -> bool:
    """Whether any run has more clients than one bar each can show."""
    return any(len(run.results.get("clients", {})) > max_client_bars for run in runs)


def _profiled(clients: Iterable[tuple[str, dict[str, Any]]]) -> bool:
    return any("profile" in c for _, c in clients)


def write_csv(runs: Sequence[ClientRun], path: Path) -> Path:
    """Every client of every run, one row each: ``run, client,`` then :data:`CSV_FIELDS`
    (and :data:`DEVICE_FIELDS` when a run had device profiles)."""
    per_run = [(run, clients_of(run)) for run in runs]
    profiled = any(_profiled(clients) for _, clients in per_run)
    fields = CSV_FIELDS + (DEVICE_FIELDS if profiled else ())
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("run", "client", *fields))
        for run, clients in per_run:
            writer.writerows((run.label, node, *(c.get(f, "") for f in fields)) for node, c in clients)
    return path


def _log_limits(ax: Any, values: list[float]) -> None:
    positive = [v for v in values if v > 0]
    if positive:
        ax.set_ylim(min(positive) / 3, max(positive) * 3)


def plot_bars(fig: Any, runs: Sequence[ClientRun], legend: Any) -> None:
    """Grouped bars per client: uplink KB, downlink KB, training seconds; one bar colour per run.

    All three panels use a log y axis (compression makes uplink bytes differ 100x
    between runs; one scale for all panels so heights read alike), except a panel with
    no positive value (every device offline), which stays linear.
    """
    axes = fig.subplots(len(CLIENT_PANELS), 1, sharex=True)
    nodes = sorted({int(n) for run in runs for n in run.results.get("clients", {})})
    width = 0.8 / max(len(runs), 1)
    heights: list[list[float]] = [[] for _ in CLIENT_PANELS]
    for i, run in enumerate(runs):
        clients = run.results.get("clients", {})
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(nodes))]
        per_node = [clients.get(str(n), {}) for n in nodes]
        for ax, panel, (field, scale, _, _) in zip(axes, heights, CLIENT_PANELS):
            values = [c.get(field, 0) * scale for c in per_node]
            panel.extend(values)
            ax.bar(xs, values, width, label=run.label)
    for ax, panel, (_, _, ylabel, title) in zip(axes, heights, CLIENT_PANELS):
        if any(v > 0 for v in panel):
            ax.set(ylabel=f"{ylabel} (log)", yscale="log", title=title)
            _log_limits(ax, panel)
        else:  # nothing sent or trained (every device offline): a log axis has nothing to show
            ax.set(ylabel=ylabel, title=title)
        ax.grid(alpha=0.3, axis="y")
    axes[-1].set_xlabel("client (node id)")
    axes[-1].set_xticks(range(len(nodes)), [str(n) for n in nodes], fontsize="small")
    if nodes:
        legend(fig, axes[0], len(runs))


def plot_distributions(fig: Any, runs: Sequence[ClientRun], legend: Any) -> None:
    """Per quantity, the share of a run's clients at or below each value (log x axis, one
    curve per run); clients with zero (nothing sent yet, no training) are left out of the
    curve and counted in its legend entry."""
    axes = fig.subplots(len(CLIENT_PANELS), 1)
    for ax, (field, scale, xlabel, title) in zip(axes, CLIENT_PANELS):
        for run in runs:
            values = np.array([float(c.get(field, 0)) for _, c in clients_of(run)]) * scale
            positive = np.sort(values[values > 0])
            zeros = values.size - positive.size
            label = run.label + (f" ({zeros:,} clients at 0)" if zeros else "")
            if positive.size:
                ax.step(positive, np.arange(1, positive.size + 1) / values.size, where="post", label=label)
        ax.set(xlabel=f"{xlabel} (log)", ylabel="share of clients", title=title, ylim=(0, 1.02))
        if ax.lines:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    legend(fig, axes[0], len(runs))


def client_row(node: str, c: dict[str, Any], profiled: bool) -> list[str]:
    """One client's cells in ``report.md``'s client tables."""
    row = [node, f"{c.get('uplink_bytes', 0) / KB:.1f}", f"{c.get('downlink_bytes', 0) / KB:.1f}",
           str(c.get("replies", 0)), str(c.get("failures", 0)), f"{c.get('compute_s', 0.0):.2f}"]
    if profiled:
        row += [str(c.get("profile", "-")), f"{c.get('sim_busy_s', 0.0):.2f}", f"{c.get('energy_j', 0.0):.3f}",
                str(c.get("stragglers", 0)), str(c.get("unavailable", 0))]
    return row


def client_header(profiled: bool) -> list[str]:
    header = ["client", "uplink KB", "downlink KB", "replies", "failures", "compute s"]
    return header + (["profile", "sim s", "energy J", "stragglers", "offline"] if profiled else [])


#: Quantities a large run's percentile table shows: (field, column name, scale, format).
SUMMARY_FIELDS = (
    ("uplink_bytes", "uplink KB", 1 / KB, "{:.1f}"),
    ("downlink_bytes", "downlink KB", 1 / KB, "{:.1f}"),
    ("replies", "replies", 1.0, "{:.0f}"),
    ("failures", "failures", 1.0, "{:.0f}"),
    ("compute_s", "compute s", 1.0, "{:.2f}"),
)
DEVICE_SUMMARY_FIELDS = (("sim_busy_s", "sim s", 1.0, "{:.2f}"), ("energy_j", "energy J", 1.0, "{:.3f}"))


def markdown_section(run: ClientRun, large: bool, top_n: int, csv_name: str, table: Any) -> list[str]:
    """``report.md``'s lines about the run's clients; ``table(header, rows)`` renders a table."""
    clients = clients_of(run)
    if not clients:
        return []
    profiled = _profiled(clients)
    if not large:
        return ["", "Per client (whole run):", "", table(client_header(profiled), (client_row(n, c, profiled) for n, c in clients))]
    fields = SUMMARY_FIELDS + (DEVICE_SUMMARY_FIELDS if profiled else ())
    columns = {field: np.array([float(c.get(field, 0) or 0) for _, c in clients]) for field, *_ in fields}
    rows = [
        [f"p{q}" if q not in (0, 100) else ("min" if q == 0 else "max"),
         *(fmt.format(np.percentile(columns[field], q) * scale) for field, _, scale, fmt in fields)]
        for q in PERCENTILES
    ]
    rows.append(["mean", *(fmt.format(columns[field].mean() * scale) for field, _, scale, fmt in fields)])
    lines = ["", f"Clients: {len(clients):,} were sent a task; every one's row is in [{csv_name}]({csv_name}). "
             f"Over the clients (whole run):", "", table(["", *(name for _, name, _, _ in fields)], rows)]
    ranked = [("uplink_bytes", "uplink bytes"), ("compute_s", "training seconds")]
    if profiled:
        ranked.append(("energy_j", "joules"))
    for field, what in ranked:
        top = sorted(clients, key=lambda item: (-float(item[1].get(field, 0) or 0), int(item[0])))[:top_n]
        lines += ["", f"Top {len(top)} clients by {what}:", "",
                  table(client_header(profiled), (client_row(n, c, profiled) for n, c in top))]
    return lines

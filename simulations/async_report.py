"""The async parts of ``fedge-report``: a staleness histogram and per-step tables.

An async run's ``results.json`` has an ``async`` section
(:meth:`fedge.server.async_driver.AsyncFederationResult.async_report`): per aggregation
step the simulated time, model version, staleness and weight of every applied update
and the accuracy, and a histogram of the staleness of applied updates. Its ``rounds``
are one record per step with ``sim_round_s`` = simulated seconds since the previous
step, so :func:`fedge.simulations.report.plot_accuracy_vs_sim_time` draws sync and async
runs on one time axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

STALENESS_PLOT = "staleness"
STALENESS_TITLE = "staleness of applied updates (async runs)"


def async_section(results: dict[str, Any]) -> dict[str, Any] | None:
    section = results.get("async")
    return section if isinstance(section, dict) else None


def plot_staleness(runs: Sequence[Any], path: Path) -> Path:
    """Bars per async run: applied updates by staleness (model versions behind)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    sections = [(run.label, async_section(run.results)) for run in runs]
    histograms = [(label, section["staleness_histogram"]) for label, section in sections if section is not None]
    width = 0.8 / max(len(histograms), 1)
    for i, (label, counts) in enumerate(histograms):
        xs = [s + (i - (len(histograms) - 1) / 2) * width for s in range(len(counts))]
        ax.bar(xs, counts, width, label=label)
    ax.set(xlabel="staleness (model versions between an update's base and the step applying it)",
           ylabel="applied updates", title=STALENESS_TITLE)
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=1 if len(handles) <= 3 else 2, fontsize="small")
    fig.savefig(path, bbox_inches="tight")
    return path


def step_table(results: dict[str, Any]) -> list[str]:
    """Markdown lines: the run's async totals and one row per aggregation step."""
    section = async_section(results)
    if section is None:
        return []
    config = section["config"]
    lines = [
        "",
        f"Async (FedBuff): K={config['buffer_size']}, concurrency {config['concurrency']}, staleness "
        f"{config['staleness']} (a={config['staleness_exponent']}), max_staleness {config['max_staleness']}; "
        f"{section['arrivals']} completions, {section['applied']} applied, {section['discarded_stale']} discarded past "
        f"max_staleness, {section['lost']} lost, {section['refused']} refused, {section['in_flight_at_end']} still training "
        f"at the end{'; ' + section['stopped'] if section.get('stopped') else ''}.",
        "",
        "| step | sim s | version | staleness (applied) | weights | accuracy |",
        "|---|---:|---:|---|---|---:|",
    ]
    for step in section["steps"]:
        weights = " ".join(f"{w:.2f}" for w in step["weights"])
        lines.append(
            f"| {step['step']} | {step['time_s']:.2f} | {step['version']} | {' '.join(map(str, step['staleness']))} "
            f"| {weights} | {step['accuracy']:.4f} |"
        )
    return lines

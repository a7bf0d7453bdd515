"""What a person sees while a simulation runs: a rich progress bar and a summary table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedge.server.federation import RoundRecord
from fedge.simulations.report import SIMULATED_COLUMNS, simulated_cells

MB = 1e6
#: Rows of :func:`summary_table` (then :data:`SIMULATED_COLUMNS` with device profiles).
SUMMARY_ROWS = ["rounds", "final acc", "best acc", "uplink MB", "downlink MB", "failures", "wall s"]


class RoundProgress:
    """A progress bar over rounds showing the latest accuracy and uplink volume."""

    def __init__(self, num_rounds: int, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self._uplink = 0
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("up {task.fields[up]} MB"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("rounds", total=num_rounds, acc="-", up="0.00")

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, record: RoundRecord) -> None:
        """Advance by one round (round 0, the initial evaluation, only sets accuracy)."""
        self._uplink += record.uplink_bytes
        advance = 1 if record.round > 0 else 0
        if record.accuracy is None:  # not evaluated this round (eval_every): the last accuracy stays shown
            self._progress.update(self._task, advance=advance, up=f"{self._uplink / MB:.2f}")
        else:
            self._progress.update(self._task, advance=advance, acc=f"{record.accuracy:.4f}", up=f"{self._uplink / MB:.2f}")


def summary_table(title: str, rounds: Sequence[RoundRecord]) -> Table:
    """Totals of a run, one per line (so it fits 80 columns): rounds, final and best
    accuracy, MB each way, failures, wall seconds; with device profiles also simulated
    seconds, joules, stragglers and offline devices."""
    trained = [r for r in rounds if r.round > 0]
    simulated = any(r.sim_round_s is not None for r in trained)
    names = [*SUMMARY_ROWS, *(SIMULATED_COLUMNS if simulated else [])]
    private = final_epsilon(trained)
    if private is not None:
        names.append("epsilon")
    final = rounds[-1]
    values = [
        str(len(trained)),
        f"{final.accuracy:.4f}" if final.accuracy is not None else "-",
        f"{max(r.accuracy for r in rounds if r.accuracy is not None):.4f}",
        f"{sum(r.uplink_bytes for r in trained) / MB:.3f}",
        f"{sum(r.downlink_bytes for r in trained) / MB:.3f}",
        str(sum(r.failures + r.dropped for r in trained)),
        f"{sum(r.wall_s for r in trained):.1f}",
    ]
    if simulated:
        values += simulated_cells([asdict(r) for r in trained])
    if private is not None:
        values.append(f"{private:.3g}")
    table = Table(title=title, show_header=False, min_width=min(len(title), 80))
    table.add_column("total", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for name, value in zip(names, values):
        table.add_row(name, value)
    return table


def print_outcome(console: Console, accuracy: float, results_path: Path | None) -> None:
    """The last lines of a run: final accuracy, then the results path on a line of its
    own, never broken inside a name (a narrow terminal wraps it whole)."""
    console.print(f"final accuracy: {accuracy:.4f}")
    if results_path is not None:
        console.print(f"results: {results_path}", soft_wrap=True, markup=False, highlight=False)


def final_epsilon(trained: Sequence[RoundRecord]) -> float | None:
    """Privacy spent by the end of a DP run (None for runs without a DP wrapper)."""
    spent = [r.epsilon for r in trained if r.epsilon is not None]
    return spent[-1] if spent else None

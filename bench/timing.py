"""Where a runtime's wall clock goes: start-up, rounds, teardown, in client-rounds/s.

A :class:`Timeline` is stamped by the caller when it starts a runtime, by the central
evaluation at the end of each round (round 0 = the initial model, before any client
work), and when the runtime has returned. :meth:`Timeline.breakdown` turns the stamps
into the figures the benchmark reports; both runtimes are measured the same way, so
their figures compare.

Round 1 holds each runtime's warm-up (worker processes or Ray actors loading data and
building models on first use), so the steady state is rounds 2..N and the start-up is
everything before round 0 ends plus round 1's excess over a steady round.

Each stamp also reads the CPU seconds of the whole process tree (:mod:`bench.cpu_time`),
so the steady state is also reported in CPU milliseconds per client-round: the cost that
does not depend on how busy the rest of the machine is.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.cpu_time import run_cpu_clock


@dataclass
class Timeline:
    """``time.perf_counter`` stamps of one run (seconds)."""

    started: float = field(default_factory=time.perf_counter)
    round_ends: list[float] = field(default_factory=list)  # index r = end of round r
    accuracies: list[float] = field(default_factory=list)  # central test accuracy after round r
    finished: float | None = None
    cpu_clock: Callable[[], float] = field(default_factory=run_cpu_clock)  # CPU s of this run's processes
    round_cpu_s: list[float] = field(default_factory=list)  # index r = cpu_clock() at the end of round r

    def round_done(self, server_round: int, accuracy: float) -> None:
        """Stamp the end of ``server_round`` (0 = initial evaluation)."""
        if server_round != len(self.round_ends):
            raise ValueError(f"round {server_round} stamped out of order (expected {len(self.round_ends)})")
        self.round_ends.append(time.perf_counter())
        self.round_cpu_s.append(self.cpu_clock())
        self.accuracies.append(float(accuracy))

    def finish(self) -> None:
        """Stamp the moment the runtime has returned (after its teardown)."""
        self.finished = time.perf_counter()

    def breakdown(self, clients_per_round: int) -> dict[str, object]:
        """The run's figures; needs rounds 0..N (N >= 2) stamped and :meth:`finish`."""
        if self.finished is None:
            raise ValueError("the run was not finished (call finish())")
        num_rounds = len(self.round_ends) - 1
        if num_rounds < 2:
            raise ValueError(f"need at least 2 rounds to separate start-up from steady state, got {num_rounds}")
        rounds_s = [b - a for a, b in zip(self.round_ends, self.round_ends[1:])]
        steady = rounds_s[1:]
        steady_round_s = statistics.fmean(steady)
        before_round_0_s = self.round_ends[0] - self.started
        total_s = self.finished - self.started
        return {
            "total_s": total_s,
            "before_round_0_s": before_round_0_s,  # launch until the initial model is evaluated
            "round_s": rounds_s,  # rounds 1..N, each including its central evaluation
            "teardown_s": self.finished - self.round_ends[-1],
            "steady_round_s": steady_round_s,  # mean of rounds 2..N
            "steady_round_s_min": min(steady),
            "start_up_s": before_round_0_s + rounds_s[0] - steady_round_s,
            "client_rounds_per_s_total": clients_per_round * num_rounds / total_s,
            "client_rounds_per_s_steady": clients_per_round / steady_round_s,
            # CPU seconds of the whole process tree per client-round, rounds 2..N
            "cpu_ms_per_client_round_steady": 1000 * (self.round_cpu_s[-1] - self.round_cpu_s[1])
            / ((num_rounds - 1) * clients_per_round) if len(self.round_cpu_s) == num_rounds + 1 else None,
            "accuracy_per_round": self.accuracies,
            "final_accuracy": self.accuracies[-1],
        }

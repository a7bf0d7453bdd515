"""bench.krum_tuning's selection rule (written before its runs): the smallest worst-dev-seed
clean gap among candidates at most 1 pp worse under attack than the baseline."""

from __future__ import annotations

from typing import Any

from bench import krum_tuning
from bench.robustness import ATTACKS


def _runs(candidate: str, clean: list[float], attacked: float) -> list[dict[str, Any]]:
    runs = [{"candidate": candidate, "attack": "none", "seed": s, "accuracy": a} for s, a in zip(krum_tuning.DEV_SEEDS, clean)]
    return runs + [{"candidate": candidate, "attack": a, "seed": s, "accuracy": attacked}
                   for a in ATTACKS if a != "none" for s in krum_tuning.DEV_SEEDS]


def test_the_rule_takes_the_smallest_worst_seed_among_those_no_less_robust() -> None:
    names = list(krum_tuning.CANDIDATES)
    base, steady, fragile = krum_tuning.BASELINE, names[1], names[2]
    runs = [{"candidate": krum_tuning.FEDAVG, "attack": "none", "seed": s, "accuracy": 0.95} for s in krum_tuning.DEV_SEEDS]
    runs += _runs(base, [0.95, 0.93, 0.95, 0.95, 0.91, 0.95], attacked=0.90)  # worst 4 pp, 5 pp under attack
    runs += _runs(steady, [0.94, 0.935, 0.94, 0.94, 0.94, 0.94], attacked=0.895)  # worst 1.5 pp, 0.5 pp less robust: eligible
    runs += _runs(fragile, [0.95] * 6, attacked=0.88)  # no clean gap, but 2 pp less robust: not eligible
    result = krum_tuning.choose(runs)
    assert result["chosen"] == steady and result["holds_on_dev"] is True
    table = result["candidates"]
    assert abs(table[base]["clean_gap_pp_worst"] - 4.0) < 1e-9 and abs(table[fragile]["attacks_gap_pp_mean"] - 7.0) < 1e-9
    assert set(table) == {base, steady, fragile}  # a candidate without runs is left out, not chosen


def test_a_partial_run_has_no_choice_yet() -> None:
    runs = [{"candidate": krum_tuning.FEDAVG, "attack": "none", "seed": 3, "accuracy": 0.95}]
    assert krum_tuning.choose(runs)["chosen"] is None

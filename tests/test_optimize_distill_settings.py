"""``bench.optimize``'s distill part: its settings knob and the per-seed merge that lets seeds run in parallel.

The 3-seed figures themselves are in ``bench/results/optimize.md``; here only what could
break them: a setting that does not reach the runs' overrides, a bad one accepted, seeds
of other settings mixed into one summary, or the history and dev rows lost on a rerun.
"""

from __future__ import annotations

import pytest

from bench.optimize import DISTILL, DistillSettings, merge_distill, merge_dev


def test_settings_reach_the_federation_and_the_students_overrides():
    kd = DistillSettings.parse(["rounds=15", "anneal_rounds=10", "alpha_end=0.1", "temperature=2"], DistillSettings())
    assert "rounds=15" in kd.federation()
    assert kd.student() == ("shape.distill.temperature=2", "shape.distill.alpha=0.5", "shape.distill.feature_weight=20",
                            "shape.distill.anneal_rounds=10", "shape.distill.alpha_end=0.1")
    assert not any("anneal" in o for o in DistillSettings(anneal_rounds=0).student())  # off: the plain overrides
    assert DistillSettings.parse([], DISTILL) == DISTILL


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["roundz=3"], "distill setting 'roundz=3': expected key=value with key one of rounds"),
        (["rounds"], "distill setting 'rounds': expected key=value"),
        (["alpha=high"], "distill setting alpha='high': not a number"),
        (["rounds=0"], r"rounds must be >= 1, got 0"),
        (["alpha=1.5"], r"alpha must be in \[0, 1\], got 1.5"),
        (["rounds=10", "anneal_rounds=12"], r"anneal_rounds must be 0 \(off\) or in \[2, rounds\], got 12"),
        (["anneal_rounds=1"], r"anneal_rounds must be 0 \(off\) or in \[2, rounds\], got 1"),
        (["alpha_end=-0.1"], r"alpha_end must be in \[0, 1\], got -0.1"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(items, message):
    with pytest.raises(ValueError, match=message):
        DistillSettings.parse(items, DistillSettings())


def _record(teacher: float, scratch: float, student: float) -> dict:
    run = {"command": "fedge-sim ...", "cpu_s": 1.0, "wall_s": 2.0, "accuracy_by_round": []}
    return {"teacher": {**run, "accuracy": teacher}, "scratch": {**run, "accuracy": scratch},
            "student": {**run, "accuracy": student, "params": {"teacher_params": 400, "student_params": 100}}}


def test_seeds_merge_in_seed_order_and_other_settings_start_over_keeping_history_and_dev():
    old = {"history": [{"label": "earlier"}], "settings": {"rounds": 10}, "per_seed": {"0": _record(0.5, 0.5, 0.5)}}
    settings = {"rounds": 15}
    part = merge_distill(old, {"settings": settings, "seed": 2, "record": _record(0.95, 0.92, 0.94)})
    part = merge_dev(part, {"dev_seed": 3, "runs": {"teacher": {"accuracy": 0.9}}})
    part = merge_distill(part, {"settings": settings, "seed": 0, "record": _record(0.93, 0.90, 0.92)})
    assert part["seeds"] == [0, 2] and part["history"] == [{"label": "earlier"}] and "3" in part["dev"]["per_seed"]
    d = part["distillation"]
    assert d["vs_teacher"]["shaped"] == [0.92, 0.94] and d["vs_teacher"]["gap_pp"] == pytest.approx(1.0)
    assert d["vs_scratch"]["per_seed_gap_pp"] == pytest.approx([-2.0, -2.0]) and d["params_ratio"] == 4.0

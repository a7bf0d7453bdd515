"""``bench.optimize``'s distill part: its settings knob and the per-seed merge that lets seeds run in parallel.

The 3-seed figures themselves are in ``bench/results/optimize.md``; here only what could
break them: a setting that does not reach the runs' overrides, a bad one accepted, seeds
of other settings mixed into one summary, or the history and dev rows lost on a rerun.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from bench import optimize
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


def test_teacher_rounds_train_only_the_teacher_and_are_validated():
    kd = DistillSettings.parse(["rounds=12", "teacher_rounds=20"], DistillSettings())
    assert "rounds=20" in kd.teacher_federation() and "rounds=12" in kd.federation()
    assert kd.teacher_federation()[:-1] == kd.federation()[:-1]  # the same devices, partition and local training
    steps = DistillSettings(local_steps=40)
    assert "client.local_steps=40" in steps.federation() and "client.local_steps=20" in steps.teacher_federation()
    assert steps.scratch_name(12) == "scratch@12x40" and kd.scratch_name(12) == "scratch@12"
    with pytest.raises(ValueError, match=r"local_steps must be >= 1, got 0"):
        DistillSettings.parse(["local_steps=0"], DistillSettings())
    assert DistillSettings(rounds=12).teacher_rounds_run == 12  # 0: the students' rounds
    with pytest.raises(ValueError, match=r"teacher_rounds must be >= 0 \(0: the students' rounds\), got -1"):
        DistillSettings.parse(["teacher_rounds=-1"], DistillSettings())


def _fake_run(calls: list[tuple[str, ...]]):
    """bench.optimize.run's stand-in: records each run's overrides, accuracy by round = round / 100."""
    def fake(overrides: tuple[str, ...], seed: int, out):
        calls.append(overrides)
        rounds = int(next(o for o in overrides if o.startswith("rounds=")).removeprefix("rounds="))
        curve = [{"round": r, "accuracy": r / 100} for r in range(rounds + 1)]
        return {"accuracy": curve[-1]["accuracy"], "rounds": curve, "cpu_s": 1.0, "dir": out}
    return fake


def test_the_scratch_twin_gets_the_students_rounds_devices_and_data_and_the_teacher_its_own(monkeypatch, tmp_path):
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(optimize, "run", _fake_run(calls))
    kd = DistillSettings(rounds=12, teacher_rounds=20)
    runs = optimize.distill_seed(tmp_path, 0, {"student": kd})
    assert set(runs) == {"teacher", "scratch", "student"}
    teacher, scratch, student = calls
    assert "rounds=20" in teacher and "task.width=16" in teacher
    assert scratch == (*kd.federation(), *optimize.STUDENT) and "rounds=12" in scratch
    assert student[: len(scratch)] == scratch and "shape=distill" in student  # the twin plus the distillation only
    assert any(o.endswith("/teacher0/final_model.npz") for o in student)
    dev = optimize.distill_seed(tmp_path, 1, {"B@12": kd}, dev=True)
    assert "@" not in str(dev["teacher@20"]["dir"]) and not any("@" in o for c in calls for o in c if "teacher_path" in o)


def test_dev_seeds_share_one_teacher_and_one_scratch_run_read_at_each_candidates_rounds(monkeypatch, tmp_path):
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(optimize, "run", _fake_run(calls))
    cands = {"B@10": DistillSettings(rounds=10, teacher_rounds=20), "H@15": DistillSettings(rounds=15, teacher_rounds=20)}
    runs = optimize.distill_seed(tmp_path, 3, cands, dev=True)
    assert len(calls) == 4 and sum("shape=distill" not in c and "task.width=8" in c for c in calls) == 1
    assert runs["scratch@10"]["accuracy"] == 0.10 and runs["scratch@10"]["from"] == "scratch@15 after round 10"
    assert runs["teacher@20"]["accuracy"] == 0.20 and runs["H@15"]["accuracy"] == 0.15
    calls.clear()  # students of other local steps get their own scratch twin
    runs = optimize.distill_seed(tmp_path, 4, cands | {"L@12": DistillSettings(rounds=12, teacher_rounds=20, local_steps=40)}, dev=True)
    assert len(calls) == 6 and runs["scratch@12x40"]["accuracy"] == 0.12 and "from" not in runs["scratch@12x40"]
    assert [c for c in calls if "client.local_steps=40" in c and "shape=distill" not in c] == [
        (*DistillSettings(rounds=12, local_steps=40).federation(), *optimize.STUDENT)]
    with pytest.raises(ValueError, match="one candidate"):
        optimize.distill_seed(tmp_path, 0, cands)


def _dev(rows: dict[str, tuple[float, float, float]], rounds: int) -> dict:
    return {"teacher@20": {"accuracy": rows["t"][0]}, f"scratch@{rounds}": {"accuracy": rows["t"][1]}} | {
        n: {"accuracy": a[2], "settings": asdict(DistillSettings(rounds=rounds)), "teacher": "teacher@20", "scratch": f"scratch@{rounds}"}
        for n, a in rows.items() if n != "t"}


def test_the_dev_rule_takes_most_seeds_meeting_both_halves_then_the_largest_smallest_margin():
    # X: above scratch and within 1.5 pp on both seeds (margins 0.5, 0.2); Y: a bigger lead but 2 pp below its teacher
    # on seed 4; Z: both seeds too, margins 0.5 and 0.5
    seed3 = _dev({"t": (0.95, 0.93, 0), "X": (0, 0, 0.940), "Y": (0, 0, 0.945), "Z": (0, 0, 0.945)}, 15)
    seed4 = _dev({"t": (0.95, 0.92, 0), "X": (0, 0, 0.938), "Y": (0, 0, 0.930), "Z": (0, 0, 0.940)}, 15)
    dev = {"per_seed": {"3": seed3, "4": seed4}, "rule": optimize.DEV_RULE}
    scores = optimize.dev_scores(dev)
    assert scores["X"]["met"] == [3, 4] and scores["Y"]["met"] == [3]
    assert scores["X"]["ranked"][1] == pytest.approx(0.3) and optimize.dev_choice(scores) == "Z"
    assert "By it: **Z**" in optimize.dev_markdown(dev)[0]


def test_dev_candidates_by_name_and_an_unknown_name_refused():
    assert list(optimize.dev_candidates(["L@12", "B@10"])) == ["B@10", "L@12"]  # DEV_CANDIDATES' order
    assert optimize.dev_candidates([]) == optimize.DEV_CANDIDATES
    with pytest.raises(ValueError, match=r"--candidates X@3: not in DEV_CANDIDATES \(B@10"):
        optimize.dev_candidates(["X@3"])


def test_distill_is_the_rules_choice_on_the_recorded_dev_seeds():
    import json

    from bench.results_files import RESULTS

    dev = json.loads((RESULTS / "optimize.json").read_text())["parts"]["distill"]["dev"]
    assert dev["rule"] == optimize.DEV_RULE
    assert DISTILL == optimize.DEV_CANDIDATES[optimize.dev_choice(optimize.dev_scores(dev))]

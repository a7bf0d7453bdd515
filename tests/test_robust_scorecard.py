"""bench.robustness's bookkeeping on made-up runs: the plan, the honest-only reference, the
verdicts of issue 12's must-shows and the markdown (no simulation runs here)."""

from __future__ import annotations

import argparse

from bench.cpu_time import finished_tree_cpu_s
from bench.robustness import ABSENT, markdown, plan, summarise, verdicts


def _run(strategy: str, attack: str, seed: int, accuracy: float, compression: str = "topk", backdoor: float | None = None) -> dict[str, object]:
    return {"strategy": strategy, "attack": attack, "compression": compression, "seed": seed, "accuracy": accuracy,
            "seconds": 1.0, "cpu_s": 1.0, "backdoor_success": backdoor, "excluded_attackers": 0, "excluded_honest": 0}


def _args(**kw: object) -> argparse.Namespace:
    base = dict(seeds=2, rounds=3, quick=False, preset=None, strategies=["FedAvg", "Krum"], attacks=["signflip"], compressions=["q8", "topk"])
    return argparse.Namespace(**{**base, **kw})


def test_every_grid_plans_the_honest_only_reference_per_compression_and_seed() -> None:
    cells = plan(_args())
    reference = [c for c in cells if c[1] == ABSENT]
    assert sorted((c[2], c[3]) for c in reference) == [("q8", 0), ("q8", 1), ("topk", 0), ("topk", 1)]
    assert all(c[0] == "FedAvg" for c in reference)
    assert len(cells) == 4 + 2 * 2 * 2 * 2  # reference + strategies x attacks (none added) x compressions x seeds
    assert any(c[1] == ABSENT for c in plan(_args(preset="must-shows")))


def test_the_reference_is_reported_but_never_the_best_defence() -> None:
    runs = [_run("FedAvg", "none", s, 0.95) for s in range(2)]
    runs += [_run("FedAvg", ABSENT, s, 0.95) for s in range(2)]  # the perfect defence would tie clean FedAvg
    runs += [_run("Krum", "signflip", 0, 0.90), _run("Krum", "signflip", 1, 0.93)]
    v = verdicts(summarise(runs))
    assert v["attacks"]["signflip"]["best"] == "Krum"
    assert abs(v["attacks"]["signflip"]["gap_pp_max"] - 5.0) < 1e-9 and not v["attacks"]["signflip"]["holds"]
    assert v["honest_only"]["gap_pp_max"] == 0.0
    assert ABSENT not in v["attacks"]


def test_markdown_names_the_backdoor_with_and_without_the_best_defence() -> None:
    runs = [_run("FedAvg", "none", 0, 0.95), _run("FedAvg", "backdoor", 0, 0.95, backdoor=0.9),
            _run("Krum", "backdoor", 0, 0.70, backdoor=0.1), _run("Screened FedAvg", "backdoor", 0, 0.945, backdoor=0.5)]
    rows = summarise(runs)
    payload = {"grid": "g", "done": "d", "host": "h", "loadavg_before": (1.0, 1.0, 1.0), "loadavg_after": (1.0, 1.0, 1.0),
               "wall_s": 1.0, "jobs": 2, "cpu_s_total": 2.0, "cpu_s_is_process_tree": True, "idle_2core_wall_s_estimate": 1.0,
               "rows": rows, "verdicts": verdicts(rows)}
    text = markdown(payload)
    # Krum stops the backdoor but costs 25 pp: the best defence is the one within the margin
    assert "- topk: FedAvg 0.90 (accuracy 0.950); best defence Screened FedAvg 0.50" in text
    assert "of the whole process tree" in text


def test_process_tree_cpu_seconds_count_this_process() -> None:
    before = finished_tree_cpu_s()
    sum(i * i for i in range(200_000))
    assert finished_tree_cpu_s() > before > 0


def test_the_cost_projection_multiplies_each_rules_measured_cell_by_its_cells_in_the_full_grid() -> None:
    from bench.robustness import ATTACKS, COMPRESSIONS, STRATEGIES, cost_projection, projection_markdown

    sample = [{"strategy": "FedAvg", "cpu_s": 4.0, "rounds": 20}, {"strategy": "FedAvg", "cpu_s": 6.0, "rounds": 20},
              {"strategy": "Bulyan", "cpu_s": 30.0, "rounds": 20}, {"strategy": "Krum", "cpu_s": 7.0, "rounds": 20},
              {"strategy": "FedAvg", "cpu_s": 1.5, "rounds": 1}]
    p = cost_projection(sample, rounds=20, seeds=3)
    per_rule = len(ATTACKS) * len(COMPRESSIONS) * 3
    assert p["cells"] == len(STRATEGIES) * per_rule + len(COMPRESSIONS) * 3
    assert p["cpu_s_per_cell"] == {"FedAvg": 5.0, "Bulyan": 30.0, "Krum": 7.0}
    assert p["cpu_s_per_cell_unsampled"] == 6.0  # the mean of the non-Bulyan rules: Bulyan's cost is its own
    expected = 5.0 * (per_rule + len(COMPRESSIONS) * 3) + 30.0 * per_rule + 7.0 * per_rule + 6.0 * per_rule * (len(STRATEGIES) - 3)
    assert abs(p["projected_cpu_s"] - expected) <= 1 and p["fixed_cpu_s_per_cell"] == 1.5
    text = "\n".join(projection_markdown({"projection": p, "loadavg_before": (9.0, 0, 0), "loadavg_after": (8.0, 0, 0)}))
    assert "PROJECTION" in text and "not a run of the grid" in text
    assert p["issue_rules_cells"] == 7 * per_rule + len(COMPRESSIONS) * 3 == 450


def test_must_show_2_holds_flowers_refused_rules_to_their_sparse_aware_replacement() -> None:
    runs = [_run("FedAvg", "none", s, 0.95, c) for s in range(2) for c in ("q8", "topk")]
    runs += [_run("Krum", "none", s, 0.40, "topk") for s in range(2)]  # Flower's, opt-in: collapses
    runs += [_run("SparseKrum", "none", s, 0.94, "topk") for s in range(2)]
    runs += [_run("MultiKrum", "none", s, 0.80, "topk") for s in range(2)]  # its replacement was not run
    runs += [_run("Krum", "none", s, 0.90, "q8") for s in range(2)]
    topk = verdicts(summarise(runs))["no_attack"]
    assert topk["Krum"]["refused_use"] == "SparseKrum" and topk["Krum"]["holds"]
    assert topk["MultiKrum"]["refused_use"] == "SparseMultiKrum" and not topk["MultiKrum"]["holds"]
    assert topk["SparseKrum"]["holds"] and "refused_use" not in topk["SparseKrum"]
    dense = verdicts(summarise(runs), compression="q8")["no_attack"]
    assert "refused_use" not in dense["Krum"] and not dense["Krum"]["holds"]  # accepted at q8: held to itself

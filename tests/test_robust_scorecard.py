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


def test_the_cost_projection_multiplies_each_rules_measured_cell_by_its_cells_in_the_grid() -> None:
    from bench.robustness import cost_projection, projection_markdown

    sample = [{"strategy": "FedAvg", "cpu_s": 4.0, "plain_cpu_s": 5.0}, {"strategy": "FedAvg", "cpu_s": 6.0, "plain_cpu_s": 7.0},
              {"strategy": "Bulyan", "cpu_s": 30.0, "plain_cpu_s": 31.0}]
    cells = [("FedAvg", "none", "topk", s, 20) for s in range(3)] + [("Bulyan", "none", "q8", 0, 20), ("Krum", "ipm", "q8", 0, 20)]
    p = cost_projection(sample, 0.3, cells)
    assert p["cells"] == 5 and p["cells_by_strategy"] == {"FedAvg": 3, "Bulyan": 1, "Krum": 1}
    assert p["cpu_s_per_cell"] == {"FedAvg": 5.0, "Bulyan": 30.0} and p["cpu_s_per_cell_unsampled"] == 17.5
    assert abs(p["projected_cpu_s"] - (5.1 * 3 + 30.1 + 17.6)) <= 1  # a third of a compose per cell
    assert p["plain_cpu_s_per_cell_mean"] == 14.33 and p["lean_cpu_s_per_cell_mean"] == 13.43
    text = "\n".join(projection_markdown({"projection": p, "loadavg_before": (9.0, 0, 0), "loadavg_after": (8.0, 0, 0)}))
    assert "plain 14.33, lean 13.43" in text and "5 cells at 20 rounds" in text


def test_the_default_grid_runs_issue_12s_rules_everywhere_and_the_extras_at_top_k() -> None:
    from bench.robustness import ATTACKS, COMPRESSIONS, ISSUE_STRATEGIES, STRATEGIES, default_plan

    cells = default_plan(20)
    issue = [c for c in cells if c[0] in ISSUE_STRATEGIES and c[1] != ABSENT]
    extras = [c for c in cells if c[0] not in ISSUE_STRATEGIES]
    assert len(issue) == len(ISSUE_STRATEGIES) * len(ATTACKS) * len(COMPRESSIONS) * 3 == 441
    assert {c[2] for c in extras} == {"topk"} and len(extras) == (len(STRATEGIES) - 7) * len(ATTACKS) * 3
    assert len([c for c in cells if c[1] == ABSENT]) == len(COMPRESSIONS) * 3
    assert len(set(cells)) == len(cells) and {c[4] for c in cells} == {20}


def test_a_cached_config_at_another_seed_is_the_config_composed_with_that_seed(make_cfg) -> None:
    from omegaconf import OmegaConf

    from bench.robustness import cell_config, cell_overrides

    make_cfg([])  # registers the schema
    from hydra import initialize_config_dir

    from bench.robustness import CONF_DIR

    overrides = cell_overrides("Screened FedAvg", "backdoor", "topk", 7)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cached = [cell_config(overrides, seed) for seed in (0, 2)]
        fresh = cell_config(overrides, 2, cache=False)
    assert OmegaConf.to_container(cached[1], resolve=True) == OmegaConf.to_container(fresh, resolve=True)
    assert cached[0].task.seed == 0 and cached[1].task.seed == 2 and cached[1].partition.seed == 2
    cached[1].client.lr = 99.0  # a run writing into its config leaves the cache alone
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert cell_config(overrides, 1).client.lr != 99.0


def test_the_heat_map_has_one_panel_per_compression(tmp_path) -> None:
    import matplotlib.image

    from bench.robustness import heatmap

    runs = [_run("FedAvg", "none", 0, 0.95, c) for c in ("none", "q8", "topk")]
    runs += [_run("Krum", "signflip", 0, 0.5, c) for c in ("none", "q8", "topk")] + [_run("Screened FedAvg", "ipm", 0, 0.9)]
    heatmap(summarise(runs), tmp_path / "h.png")
    assert matplotlib.image.imread(tmp_path / "h.png").shape[1] > 600


def test_resume_keeps_only_cells_of_the_same_rounds_and_base_settings(tmp_path, monkeypatch) -> None:
    import json

    import bench.robustness as robustness

    monkeypatch.setattr(robustness, "RESULTS", tmp_path)
    jobs = [("FedAvg", "none", "topk", 0, 20), ("Krum", "ipm", "topk", 0, 20)]
    payload = {"rounds": 20, "base_overrides": robustness.BASE, "cpu_s_total": 10.0, "wall_s": 20.0, "jobs": 2,
               "runs": [_run("FedAvg", "none", 0, 0.9), _run("FedAvg", "none", 1, 0.9)]}
    (tmp_path / "robustness.json").write_text(json.dumps(payload))
    runs, earlier = robustness.resumed_runs(jobs, 20)
    assert [r["seed"] for r in runs] == [0] and earlier["cpu_s"] == 5.0 and earlier["cells"] == 1
    assert robustness.resumed_runs(jobs, 30) == ([], {})
    (tmp_path / "robustness.json").write_text(json.dumps({**payload, "base_overrides": [*robustness.BASE[:-1], "client.lr=0.05"]}))
    assert robustness.resumed_runs(jobs, 20) == ([], {})


def test_a_stopped_grid_projects_the_default_grid_from_its_finished_cells() -> None:
    from bench.robustness import default_plan, grid_sample, grid_sample_markdown

    runs = [{**_run("FedAvg", "none", s, 0.9), "cpu_s": 4.0} for s in range(3)] + [{**_run("Bulyan", "none", 0, 0.2), "cpu_s": 6.0}]
    payload = {"runs": runs, "wall_s": 100.0, "jobs": 2, "loadavg_before": (9.0, 0, 0), "loadavg_1min_mean": 9.5, "rounds": 20}
    sample = grid_sample(payload)
    cells = default_plan(20)
    assert sample["projection"]["cells"] == len(cells) and sample["cells_cpu_s"] == 18.0
    assert abs(sample["projection"]["projected_cpu_s"] - 5.0 * len(cells)) <= len(cells) / 2  # unsampled rules: the mean of the sampled
    assert "4 cells finished" in "\n".join(grid_sample_markdown(sample))


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


def test_merge_replaces_only_the_regenerated_cells_and_keeps_every_other_row(tmp_path, monkeypatch) -> None:
    """--merge: a rule's rerun cells replace its earlier runs; every other run and row stays as it
    was; rows, verdicts, markdown and heat-map come from the merged runs; the rerun is recorded."""
    import argparse
    import json

    import bench.robustness as robustness

    monkeypatch.setattr(robustness, "RESULTS", tmp_path)
    runs = [_run("FedAvg", "none", s, 0.95) for s in range(2)] + [_run("FedAvg", "signflip", s, 0.60) for s in range(2)]
    runs += [_run("SparseMedian", a, s, 0.94) for a in ("none", "signflip") for s in range(2)]
    runs += [_run("SparseKrum", a, s, 0.91) for a in ("none", "signflip") for s in range(2)]
    rows = summarise(runs)
    payload = {"grid": "g", "done": "d", "host": "h", "loadavg_before": (1.0, 1.0, 1.0), "loadavg_after": (1.0, 1.0, 1.0),
               "wall_s": 1.0, "jobs": 2, "cpu_s_total": 2.0, "cpu_s_is_process_tree": True, "idle_2core_wall_s_estimate": 1.0,
               "rounds": 3, "base_overrides": robustness.BASE, "rows": rows, "verdicts": verdicts(rows), "runs": runs}
    args = argparse.Namespace(seeds=2, rounds=3, quick=False, preset=None, strategies=["SparseKrum"], attacks=["none", "signflip"],
                              compressions=["topk"], extras_at=["topk"], jobs=2)
    jobs = [j for j in plan(args) if j[0] in args.strategies and j[1] != ABSENT]
    assert sorted(jobs) == sorted(("SparseKrum", a, "topk", s, 3) for a in ("none", "signflip") for s in range(2))  # no FedAvg rerun
    new = [_run("SparseKrum", a, s, 0.945) for a in ("none", "signflip") for s in range(2)]
    record = robustness.regeneration_record(args, jobs, (1.0, 1.0, 1.0), 12.0, 20.0)
    assert len(record["commit"]) == 40 and record["strategies"] == ["SparseKrum"] and record["seeds"] == [0, 1]
    merged = robustness.merge_regenerated(payload, new, record)
    untouched = lambda rs: sorted((r for r in rs if r["strategy"] != "SparseKrum"), key=lambda r: (r["strategy"], r["attack"]))  # noqa: E731
    assert untouched(merged["rows"]) == untouched(rows)
    assert [r for r in merged["runs"] if r["strategy"] != "SparseKrum"] == [r for r in runs if r["strategy"] != "SparseKrum"]
    krum = [r for r in merged["runs"] if r["strategy"] == "SparseKrum"]
    assert len(krum) == 4 and all(r["accuracy"] == 0.945 and r["regeneration"] == 0 for r in krum)
    assert abs(merged["verdicts"]["no_attack"]["SparseKrum"]["gap_pp_max"] - 0.5) < 1e-9
    assert merged["regenerated"][0]["cells"] == 4 and merged["regenerated"][0]["replaced_cells"] == 4
    assert merged["grid"] == "g" and merged["wall_s"] == 1.0  # the grid run's description and cost are kept
    again = robustness.merge_regenerated(merged, new[:1], record)
    assert len(again["regenerated"]) == 2 and len(again["runs"]) == len(merged["runs"])
    robustness.write(merged)
    robustness.heatmap(merged["rows"], tmp_path / "robustness.png")
    assert json.loads((tmp_path / "robustness.json").read_text())["regenerated"][0]["strategies"] == ["SparseKrum"]
    text = (tmp_path / "robustness.md").read_text()
    assert "Rows regenerated after the grid run" in text and "4 cells (4 earlier runs replaced)" in text
    assert "chosen on dev seeds 3-8" in text and "| SparseKrum (resampled buckets of 3, bound 2x median) | none | topk |" in text
    assert (tmp_path / "robustness.png").stat().st_size > 0
    again["regenerated"][0]["labels"] = {"SparseKrum": "SparseKrum (an older default)"}  # the row name when it ran
    robustness.write(again)
    text = (tmp_path / "robustness.md").read_text()
    assert "SparseKrum (an older default) x none, signflip" in text  # an earlier regeneration keeps the name it ran under
    assert text.count("These rows were replaced by the regeneration of") == 1  # the earlier one, not the latest

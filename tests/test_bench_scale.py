"""bench.scale's timed run end to end on a tiny federation: the timed ``fedge-sim`` script
(shared with bench.startup) runs, stamps every round, and the process tree's memory is
sampled (the figures themselves are bench/results/scale.md's, not asserted here)."""

from __future__ import annotations

from bench.scale import run_one


def test_a_timed_scale_run_stamps_its_rounds_and_samples_the_trees_memory(tmp_path):
    out = tmp_path / "this-6-6"
    run = run_one(clients=6, sampled=6, rounds=3, copies=1, out=out, tree=None)
    assert (run["clients"], run["sampled"], run["rounds"]) == (6, 6, 3)
    assert run["start_up_s"] > 0 and run["first_round_s"] > 0 and run["round_s"] > 0
    assert run["total_s"] >= run["start_up_s"]
    assert run["peak_rss_bytes"] >= run["peak_pss_bytes"] > 0
    assert run["processes"] >= 3  # the server process, the fork server and its workers
    assert (out / "results.json").is_file()

"""fedge-search: a tiny real search (2 trials of a 1-round har federation, exported and
measured), the budget marking an over-budget trial infeasible, the Pareto report, and
bad configurations refused before any trial, naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fedge.search.budget import DeviceBudget, Measured, device_budget
from fedge.search.knobs import SearchConfigError, overrides_for, search_space
from fedge.search.search_cli import main
from fedge.search.settings import SEARCH_DIR, load_settings
from fedge.simulations.devices.profile import DeviceProfile
from fedge.simulations.report_cli import main as report_main
from fedge.tasks.har import HarTask

TINY = ["trials=2", "federation.rounds=1", "federation.client.local_steps=2", "latency_samples=5"]


def tiny_config(tmp_path: Path, **changes) -> Path:
    """har_wearable with ``changes`` over its keys, as a YAML file."""
    config = yaml.safe_load((SEARCH_DIR / "har_wearable.yaml").read_text())
    config.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tiny_search_writes_results_marks_over_budget_infeasible_and_plots(tmp_path, capsys):
    # width 4 (a ~3k-parameter CNN) fits a 12 kB flash budget, width 32 (~25k parameters) cannot
    config = tiny_config(tmp_path, space={"width": {"choices": [4, 32]}}, enqueue=[{"width": 4}, {"width": 32}],
                         budget={"flash_kb": 12.0, "train_ram_kb": 1.0e6, "latency_ms": 1.0e3})
    out = tmp_path / "search"
    assert main([str(config), *TINY, "-o", str(out)]) == 0
    result = json.loads((out / "search.json").read_text())
    small, large = result["trials"]
    assert small["knobs"] == {"width": 4} and large["knobs"] == {"width": 32}
    assert small["status"] == large["status"] == "complete"
    assert small["int8_kb"] < 12.0 < large["int8_kb"]  # measured from the exported ONNX files
    assert small["feasible"] and not large["feasible"]
    assert large["violations"] and large["violations"][0].startswith("flash_kb ")
    assert result["answer"] == 0  # the over-budget trial is never the answer, whatever its accuracy
    assert result["pareto"] == [0]  # the front holds feasible trials only
    assert result["counts"] == {"trials": 2, "complete": 2, "feasible": 1, "failed": 0}
    assert result["cost"]["cpu_s"] > 0 and result["cost"]["wall_s"] > 0
    for trial in result["trials"]:  # every trial is a real run directory with its export
        run_dir = Path(trial["run_dir"])
        assert (run_dir / "results.json").is_file() and (run_dir / "export" / "model_int8.onnx").is_file()
        assert trial["train_ram_kb"] > 0 and trial["macs"] > 0 and 0 <= trial["accuracy"] <= 1
    assert (out / "pareto.png").stat().st_size > 0
    md = (out / "search.md").read_text()
    assert "**Answer: trial 0**" in md and "![Pareto front](pareto.png)" in md and "flash_kb" in md
    # fedge-report redraws the Pareto plot from search.json alone
    (out / "pareto.png").unlink()
    assert report_main([str(out)]) == 0
    assert (out / "pareto.png").is_file()
    assert "search report:" in capsys.readouterr().out


def test_a_trial_over_the_latency_or_ram_budget_is_infeasible():
    budget = DeviceBudget("test", flash_kb=64, train_ram_kb=128, latency_ms=20, int8_macs_per_s=32e6)
    fits = Measured(int8_bytes=15_000, train_bytes=100_000, macs=300_000)  # 9.4 ms
    assert budget.violations(fits) == [] and max(budget.constraints(fits)) <= 0
    slow = Measured(int8_bytes=15_000, train_bytes=100_000, macs=1_000_000)  # 31 ms
    assert budget.violations(slow) == ["latency_ms 31.25 > 20"] and budget.constraints(slow)[2] > 0
    big = Measured(int8_bytes=15_000, train_bytes=129_000, macs=300_000)
    assert budget.violations(big) == ["train_ram_kb 129 > 128"]


def test_wearable_profile_has_a_budget():
    budget = device_budget("wearable", {})
    assert (budget.flash_kb, budget.train_ram_kb, budget.latency_ms, budget.int8_macs_per_s) == (64, 128, 20, 32e6)


@pytest.mark.parametrize(("overrides", "key"), [
    (["space.widht.choices=[8,16]"], "space.widht: unknown knob (did you mean 'width'?)"),
    (["budget.flash_kb=0"], "budget.flash_kb: must be > 0"),
    (["budget.latency_ms=-5"], "budget.latency_ms: must be > 0"),
    (["budget.ram_kb=5"], "budget.ram_kb: unknown"),
    (["trails=3"], "trails: unknown key (did you mean 'trials'?)"),
    (["trials=0"], "trials: must be an integer >= 1"),
    (["sampler=grid"], "sampler: must be one of nsga2, tpe"),
    (["objective=params"], "objective: must be one of int8_kb, latency_ms"),
    (["profile=toaster"], "profile: no device profile 'toaster'"),
    (["space.lr.low=0.5"], "space.lr: low must be < high"),
    (["space.depth.choices=[2,9]", "enqueue=[]"], "space.depth=9: depth must be an integer in [2, 6]"),
    (["space.kernel.choices=[4]", "enqueue=[]"], "space.kernel=4: kernel must be an odd integer"),
    (["enqueue=[{width: 7}]"], "enqueue[0].width: 7 is outside space.width"),
    (["federation.task=digits"], "space.depth=2:"),  # digits takes no depth knob: refused before any trial
    (["federation.rounds=0"], "federation: rounds must be >= 1"),
])
def test_bad_config_refused_naming_the_key_before_any_trial(tmp_path, capsys, overrides, key):
    out = tmp_path / "out"
    assert main(["har_wearable", *overrides, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedge-search: configuration error: {key}"), err
    assert not out.exists()  # nothing ran, nothing was written


def test_empty_space_and_exclusive_knobs_refused(tmp_path, capsys):
    assert main([str(tiny_config(tmp_path, space={}, enqueue=[]))]) == 2
    assert "configuration error: space: empty" in capsys.readouterr().err
    with pytest.raises(SearchConfigError, match=r"space.rank_budget: cannot be searched together with space.prune_ratio"):
        search_space({"prune_ratio": {"choices": [0, 0.3]}, "rank_budget": {"choices": [0, 0.4]}})
    with pytest.raises(SearchConfigError, match=r"space.lr: step and log: true exclude each other"):
        search_space({"lr": {"low": 0.01, "high": 0.1, "log": True, "step": 0.01}})


def test_knobs_become_fedge_sim_overrides():
    assert overrides_for({"width": 8, "lr": 0.02, "prune_ratio": 0}) == ["task.width=8", "client.lr=0.02"]
    assert overrides_for({"prune_ratio": 0.3}) == ["shape=structured", "shape.structured.ratio=0.3"]
    settings = load_settings("har_wearable")
    assert "task=har" in settings.federation_overrides() and "client.local_epochs=1" in settings.federation_overrides()


def test_profile_budget_fields_checked():
    with pytest.raises(ValueError, match="flash_kb must be >= 0"):
        DeviceProfile(name="x", flash_kb=-1.0)


def test_har_knobs_keep_the_default_model_and_change_the_shape():
    default = HarTask().build_model()
    assert sum(p.numel() for p in default.parameters()) == 6423  # the documented default, unchanged
    assert [n for n, _ in default.named_parameters()] == [
        "features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias",
        "features.6.weight", "features.6.bias", "classifier.1.weight", "classifier.1.bias"]
    deep = HarTask(width=8, depth=4, kernel=7).build_model()
    assert [m.kernel_size[0] for m in deep.modules() if isinstance(m, torch.nn.Conv1d)] == [7, 7, 7, 3]
    assert deep(torch.zeros(2, 6, 100)).shape == (2, 7)
    with pytest.raises(ValueError, match="depth must be an integer in"):
        HarTask(depth=1)
    with pytest.raises(ValueError, match="kernel must be an odd integer"):
        HarTask(kernel=4)


def test_training_ram_meter_follows_checkpointing_momentum_and_batch(tmp_path, make_cfg):
    from fedge.client.train_config import TrainConfig
    from fedge.search.measure import peak_training_bytes
    from fedge.simulations.experiment import run_experiment

    run_experiment(make_cfg(["task=har", "partition=iid", "num_clients=2", "rounds=1", "client.local_steps=2"]), tmp_path)
    params = sum(p.numel() for p in HarTask().build_model().parameters()) * 4  # float32 bytes of the weights
    plain = peak_training_bytes(tmp_path, TrainConfig(batch_size=8, momentum=0.9))
    assert peak_training_bytes(tmp_path, TrainConfig(batch_size=8, momentum=0.0)) == plain - params  # no momentum slot
    assert peak_training_bytes(tmp_path, TrainConfig(batch_size=4, momentum=0.9)) < plain  # activations scale with batch
    checkpointed = peak_training_bytes(tmp_path, TrainConfig(batch_size=8, momentum=0.9, checkpointing=True,
                                                             checkpoint_segments=2))
    # har is Sequential(features, classifier): checkpointing recomputes the whole features block in backward,
    # and the meter counts that recomputation (a meter blind to it would see only the segments' inputs)
    assert 0.9 * plain < checkpointed < plain


def test_memory_knobs_become_overrides():
    assert overrides_for({"checkpoint_segments": 0, "momentum": 0.0}) == ["client.checkpointing=false", "client.momentum=0.0"]
    assert overrides_for({"checkpoint_segments": 2}) == ["client.checkpointing=true", "client.checkpoint_segments=2"]


def test_without_optuna_fedge_search_says_which_extra_instead_of_a_traceback(tmp_path):
    """A user who installed fedge without the search extra gets one line and exit 2, --help included."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['optuna'] = None\n"  # as if optuna were not installed
            "from fedge.search.search_cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    for args in (["--help"], ["har_wearable", "trials=1"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == "fedge-search: needs optuna, the search extra: pip install 'fedge[search]'"
        assert list(tmp_path.iterdir()) == []

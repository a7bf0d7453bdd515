"""fedge-report: plots and a markdown report, also at the end of fedge-sim and of a sweep (must-show 3)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fedge.simulations.report import make_report, run_labels

BIN = Path(sys.executable).parent
PNGS = ("accuracy_vs_round.png", "accuracy_vs_uplink.png", "clients.png")
FAST = ["rounds=2", "progress=false", "backend.num_workers=0", "client.local_epochs=1"]


def fedge_sim(tmp_path, *args):
    return subprocess.run(
        [str(BIN / "fedge-sim"), *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/multi"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # in-process clients, one torch thread as in a worker
    )


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = imread(path)
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500, pixels.shape
    assert float(np.std(pixels[..., :3])) > 0.01, f"{path} is blank"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`fedge-sim -m compression=none,fp16,topk`, as a user runs it."""
    tmp = tmp_path_factory.mktemp("sweep")
    proc = fedge_sim(tmp, "-m", "compression=none,fp16,topk", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "multi", proc


def test_sweep_ends_with_one_report_comparing_its_runs(sweep):
    sweep_dir, proc = sweep
    assert sorted(p.parent.name for p in sweep_dir.rglob("results.json")) == ["0", "1", "2"]
    reports = list(sweep_dir.rglob("report.md"))
    assert reports == [sweep_dir / "report.md"], reports
    assert f"sweep report: {(sweep_dir / 'report.md').resolve()}" in proc.stdout  # absolute, as results: is
    text = reports[0].read_text()
    for label in ("digits/fedavg/none", "digits/fedavg/fp16", "digits/fedavg/topk"):
        assert f"## {label}" in text  # a table per run
        assert f"| {label} | 2 |" in text  # a row in the summary table
    for png in PNGS:
        assert f"]({png})" in text
        assert_real_png(sweep_dir / png)


def test_report_numbers_are_the_runs_numbers(sweep):
    sweep_dir, _ = sweep
    text = (sweep_dir / "report.md").read_text()
    for results_path in sweep_dir.rglob("results.json"):
        results = json.loads(results_path.read_text())
        uplink_mb = sum(r["uplink_bytes"] for r in results["rounds"]) / 1e6
        assert f"| {results['final']['accuracy']:.4f} |" in text
        assert f"| {uplink_mb:.3f} |" in text
        # per-client bytes add up to the per-round totals
        clients = results["clients"]
        assert len(clients) == results["config"]["num_clients"]
        assert sum(c["uplink_bytes"] for c in clients.values()) == sum(r["uplink_bytes"] for r in results["rounds"])
        assert sum(c["downlink_bytes"] for c in clients.values()) == sum(r["downlink_bytes"] for r in results["rounds"])
    by_codec = {
        json.loads(p.read_text())["config"]["compression"]["name"]: sum(r["uplink_bytes"] for r in json.loads(p.read_text())["rounds"])
        for p in sweep_dir.rglob("results.json")
    }
    assert by_codec["topk"] < by_codec["fp16"] < by_codec["none"]


def test_single_run_writes_its_report(tmp_path):
    proc = fedge_sim(tmp_path, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "report.md").is_file()
    for png in PNGS:
        assert_real_png(tmp_path / "run" / png)


def test_fedge_report_cli_on_run_dirs(sweep, tmp_path):
    sweep_dir, _ = sweep
    proc = subprocess.run(
        [str(BIN / "fedge-report"), str(sweep_dir / "0"), str(sweep_dir / "2"), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## digits/fedavg/none" in text and "## digits/fedavg/topk" in text and "fp16" not in text
    for png in PNGS:
        assert_real_png(tmp_path / "out" / png)


def test_fedge_report_names_a_missing_run(tmp_path):
    proc = subprocess.run([str(BIN / "fedge-report"), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no results.json" in proc.stderr and "Traceback" not in proc.stderr


def test_labels_name_the_run_and_what_differs():
    base = {"task": {"_target_": "x.DigitsTask"}, "strategy": {"_target_": "flwr.FedAvg"}, "compression": {"name": "none", "codec": "fp32"},
            "client": {"lr": 0.05, "qat": {"bits": 0, "act_bits": 8}}, "device": {"name": "none"}, "seed": 0}
    topk = {**base, "compression": {"name": "topk", "codec": "topk"}}
    prox = {**base, "strategy": {"_target_": "flwr.FedProx", "proximal_mu": 0.1}, "seed": 1}
    qat = {**base, "client": {"lr": 0.1, "qat": {"bits": 4, "act_bits": 6}},
           "device": {"name": "mix", "profiles": {"phone": {"samples_per_s": 1}}}}
    assert run_labels([base, topk]) == ["digits/fedavg/none", "digits/fedavg/topk"]
    assert run_labels([base, prox]) == ["digits/fedavg/none seed=0", "digits/fedprox/none seed=1"]
    assert run_labels([base, qat]) == ["digits/fedavg/none client.lr=0.05", "digits/fedavg/none qat4a6 dev=mix client.lr=0.1"]
    assert run_labels([{**base, "client": {"qat": {"bits": 8, "act_bits": 8}}}]) == ["digits/fedavg/none qat8"]
    assert run_labels([base]) == ["digits/fedavg/none"]
    assert run_labels([base, base]) == ["digits/fedavg/none #0", "digits/fedavg/none #1"]


def test_make_report_rejects_runs_without_rounds(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"config": {}, "rounds": []}))
    with pytest.raises(ValueError, match="no rounds"):
        make_report([tmp_path])


def test_a_ten_thousand_client_run_gets_distributions_top_n_and_a_csv(tmp_path):
    """Issue 16: above `max_client_bars` clients, no bar and no table row per client; every client in clients.csv."""
    import csv

    from bench.scale_outputs import write_run
    from fedge.simulations.report import clients_figure, load_runs

    run = write_run(tmp_path / "big", 10_000, profiled=True)
    report = make_report([run], tmp_path / "out", max_client_bars=50, top_n=7)
    results = json.loads((run / "results.json").read_text())
    with (tmp_path / "out" / "clients.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10_000 and {r["client"] for r in rows} == set(results["clients"])
    first = results["clients"][rows[0]["client"]]
    assert int(rows[0]["uplink_bytes"]) == first["uplink_bytes"] and rows[0]["profile"] == first["profile"]
    text = report.read_text()
    assert "Per client (whole run)" not in text and "[clients.csv](clients.csv)" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:] in results["clients"]]
    assert len(table_rows) == 3 * 7  # top 7 by uplink bytes, by training seconds, by joules; nothing else per client
    biggest = max(results["clients"].items(), key=lambda item: item[1]["uplink_bytes"])
    assert f"| {biggest[0]} | {biggest[1]['uplink_bytes'] / 1e3:.1f} |" in text
    for row in ("| min |", "| p50 |", "| p99 |", "| max |", "| mean |"):
        assert row in text
    figure = clients_figure(load_runs([run]), max_client_bars=50)
    assert all(len(ax.patches) == 0 and len(ax.lines) == 1 for ax in figure.axes)  # one distribution curve, no bars
    assert_real_png(tmp_path / "out" / "clients.png")


def test_few_clients_keep_a_bar_and_a_row_each(tmp_path):
    from bench.scale_outputs import write_run
    from fedge.simulations.report import clients_figure, load_runs

    run = write_run(tmp_path / "small", 12)
    text = make_report([run], tmp_path / "out", max_client_bars=12).read_text()
    assert "Per client (whole run)" in text and "Top " not in text
    assert len((tmp_path / "out" / "clients.csv").read_text().splitlines()) == 13
    figure = clients_figure(load_runs([run]), max_client_bars=12)
    assert [len(ax.patches) for ax in figure.axes] == [12, 12, 12]


def test_a_run_where_no_device_sent_or_trained_draws_clients_png_without_warnings(tmp_path):
    """Every device offline (phones outside their hours): zero bars cannot go on a log axis."""
    import warnings

    from bench.scale_outputs import write_run
    from fedge.simulations.report import clients_figure, load_runs

    run = write_run(tmp_path / "offline", 4)
    results = json.loads((run / "results.json").read_text())
    for client in results["clients"].values():
        client.update(uplink_bytes=0, downlink_bytes=0, compute_s=0.0)
    (run / "results.json").write_text(json.dumps(results))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = clients_figure(load_runs([run]), max_client_bars=50)
    assert [ax.get_yscale() for ax in figure.axes] == ["linear"] * 3


def test_fedge_report_refuses_a_bad_top_n(tmp_path):
    from bench.scale_outputs import write_run

    run = write_run(tmp_path / "r", 3)
    proc = subprocess.run([str(BIN / "fedge-report"), str(run), "--top", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "top_n" in proc.stderr and "Traceback" not in proc.stderr

"""Dashboards: ``logger=tensorboard`` and ``logger=mlflow`` (issue 17, must-show 4).

Each run is read back with the dashboard's own reader: TensorBoard's
``EventAccumulator`` (what ``tensorboard --logdir`` reads) and MLflow's ``MlflowClient``
on the file store. Per round and per metric there must be exactly one point, equal to
the round's record in ``results.json``. ``fedge-sim`` and ``fedge-server`` both run as
processes; by default nothing is logged and neither package is imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from import_blocker import run_without

BIN = Path(sys.executable).parent
#: What every round reports (issue 17: accuracy, loss, bytes, simulated seconds, energy).
PER_ROUND = ("accuracy", "loss", "uplink_bytes", "downlink_bytes", "sim_round_s", "energy_j")
#: Known only from round 1 on (round 0 is the initial model: nothing simulated yet).
FROM_ROUND_1 = ("sim_round_s", "energy_j")


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_DISABLE_TELEMETRY"):
        env.pop(name, None)  # what fedge sets, it sets itself
    return env


def tensorboard_points(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir``, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def mlflow_run(store: Path):
    """The one MLflow run in the file store ``store`` and its metric histories."""
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 opens file stores only when asked
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("fedge")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    history = {name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)] for name in run.data.metrics}
    return run, history


def assert_one_point_per_round(points: dict[str, list[tuple[int, float]]], rounds: list[dict], dashboard: str) -> None:
    for name in PER_ROUND:
        want = [(r["round"], r[name]) for r in rounds if not (name in FROM_ROUND_1 and r["round"] == 0)]
        assert all(value is not None for _, value in want), (dashboard, name)
        got = sorted(points.get(name, []))
        assert [s for s, _ in got] == [s for s, _ in want], f"{dashboard} {name}: steps {[s for s, _ in got]}"
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=f"{dashboard} {name}")
    assert sorted(points["train_loss"])[0][0] == 1  # logged after the run, per round
    assert len(points["train_loss"]) == len(rounds) - 1


def test_fedge_sim_writes_tensorboard_and_mlflow_one_point_per_round(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(BIN / "fedge-sim"), "logger=[tensorboard,mlflow]", "device=phone", "num_clients=3", "rounds=3",
         "backend.num_workers=0", "client.local_epochs=1", "progress=false", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = json.loads((run_dir / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]

    assert_one_point_per_round(tensorboard_points(run_dir / "tensorboard"), rounds, "tensorboard")

    run, history = mlflow_run(run_dir / "mlruns")
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy._target_"] == "flwr.serverapp.strategy.FedAvg"
    assert run.data.params["device.name"] == "phone" and run.data.params["rounds"] == "3"
    assert_one_point_per_round(history, rounds, "mlflow")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()  # only the run dir


def test_no_logger_by_default_writes_nothing_more(make_cfg, tmp_path: Path):
    from fedge.simulations.experiment import run_experiment

    cfg = make_cfg(["num_clients=2", "rounds=1", "backend.num_workers=0", "progress=false", "client.local_steps=1"])
    assert not cfg.logger.tensorboard.enabled and not cfg.logger.mlflow.enabled
    run_experiment(cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_model.npz", "results.json"]


def test_help_and_checks_import_neither_package(tmp_path: Path):
    code = (
        "import sys\nsys.argv = ['fedge-sim', '--help']\nfrom fedge.simulations import sim_cli\n"
        "try:\n    sim_cli.main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', [m for m in ('mlflow', 'tensorboard', 'torch') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "logger       none* | mlflow | tensorboard" in proc.stdout
    assert proc.stdout.rsplit("LOADED ", 1)[1].strip() == "[]"


@pytest.mark.parametrize("missing, package", [("mlflow", "mlflow-skinny"), ("tensorboard", "tensorboard")])
def test_a_missing_package_is_a_configuration_error(tmp_path: Path, missing: str, package: str):
    body = f"""
    import os, sys
    os.chdir({str(tmp_path)!r})
    sys.argv = ['fedge-sim', 'logger={missing}', 'rounds=1']
    from fedge.simulations import sim_cli
    sim_cli.main()
    """
    proc = run_without(missing, body)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"fedge-sim: configuration error: logger.{missing}: logger={missing} needs the {package} package" in proc.stderr
    assert "pip install 'fedge[dashboards]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_tracking_uri_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from fedge.conf.logger_settings import mlflow_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert mlflow_tracking_uri("", tmp_path / "run") == (tmp_path / "run" / "mlruns").as_uri()
    assert mlflow_tracking_uri("shared/mlruns", tmp_path / "run") == (tmp_path / "shared" / "mlruns").as_uri()
    assert mlflow_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fedge_server_writes_both_dashboards(tmp_path: Path):
    from fedge.tasks.digits import DigitsTask

    port = _free_port()
    run_dir = tmp_path / "server"
    train = DigitsTask().load().train
    env = _env()
    server = subprocess.Popen(
        [str(BIN / "fedge-server"), "--insecure", f"server.address=127.0.0.1:{port}", "logger=[tensorboard,mlflow]",
         "num_clients=2", "rounds=2", "client.local_epochs=1", "server.join_timeout_s=120", "progress=false",
         f"server.checkpoint_dir={tmp_path / 'checkpoint'}", f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    clients = []
    try:
        for i in range(2):
            shard = train.subset(np.arange(i, len(train), 2))
            np.savez(tmp_path / f"{i}.npz", x=shard.x, y=shard.y)
            clients.append(subprocess.Popen(
                [str(BIN / "fedge-client"), "--server", f"127.0.0.1:{port}", "--insecure", "--device-id", str(1000 + i),
                 "--task", "digits", "--data", str(tmp_path / f"{i}.npz"), "--backoff-max", "1", "--log-level", "ERROR"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            ))
        out, _ = server.communicate(timeout=400)
        assert server.returncode == 0, out[-3000:]
        for client in clients:
            client.wait(timeout=60)
    finally:
        for proc in [server, *clients]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    rounds = json.loads((run_dir / "results.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for name, points in (("tensorboard", tensorboard_points(run_dir / "tensorboard")), ("mlflow", mlflow_run(run_dir / "mlruns")[1])):
        for metric in ("accuracy", "loss", "uplink_bytes", "downlink_bytes"):  # real devices: no simulated time
            got = sorted(points[metric])
            assert [step for step, _ in got] == [r["round"] for r in rounds], (name, metric)
            np.testing.assert_allclose([v for _, v in got], [r[metric] for r in rounds], rtol=1e-6, err_msg=f"{name} {metric}")
        assert "sim_round_s" not in points and "energy_j" not in points  # not logged as zeros

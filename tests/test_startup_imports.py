"""``fedge-sim --help`` and configuration errors import neither torch nor any dataset
library, and a ``backend=local`` worker imports neither the Grid, the server, Flower, Hydra
nor ``torch._dynamo``.

Each case runs in a fresh interpreter and lists the heavy modules loaded at its end
(timings are in ``bench/startup.py``, not here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Loaded by a run, never by --help or a refused configuration.
HEAVY = ("torch", "datasets", "flwr_datasets", "pandas", "scipy", "seaborn", "matplotlib", "sklearn")

_SIM = """
import json, sys
sys.argv = ['fedge-sim', *{args!r}]
from fedge.simulations import sim_cli
early_starts = []  # per start of the fork server by sim_cli: what of Hydra, OmegaConf, Flower, torch was loaded
started = sim_cli.fork_server.start_fork_server
def spy(*a, **k):
    early_starts.append(sorted(m for m in ('hydra', 'omegaconf', 'flwr', 'torch') if m in sys.modules))
    started(*a, **k)
sim_cli.fork_server.start_fork_server = spy
try:
    sim_cli.main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print('RESULT ' + json.dumps({{'code': code, 'loaded': [m for m in {heavy!r} if m in sys.modules], 'early_starts': early_starts}}))
"""


def _sim(args: list[str], tmp_path: Path, heavy: tuple[str, ...] = HEAVY) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", _SIM.format(args=args, heavy=heavy)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    return json.loads(done.stdout.rsplit("RESULT ", 1)[1]), done.stderr


def test_help_imports_no_torch_no_datasets_and_no_flower(tmp_path):
    result, _ = _sim(["--help"], tmp_path, (*HEAVY, "flwr"))
    assert result == {"code": 0, "loaded": [], "early_starts": []}


@pytest.mark.parametrize(
    "args, key",
    [
        (["num_clients=1"], "num_clients"),  # fedge-sim's own check
        (["strategy.fraction_train=2"], "strategy.fraction_train"),  # the strategy check
        (["compression=topk", "compression.ratio=0"], "compression"),  # building the strategy's codecs
        (["num_clientz=3"], "num_clientz"),  # an unknown key
    ],
)
def test_configuration_errors_import_no_torch(tmp_path, args, key):
    result, stderr = _sim(args, tmp_path)
    assert result["code"] == 2 and result["loaded"] == []
    assert stderr.startswith(f"fedge-sim: configuration error: {key}") or key in stderr
    assert not (tmp_path / "outputs").exists()


def test_worker_entry_point_imports_no_grid_server_flower_hydra_or_dynamo():
    """What the fork server preloads for every worker: no Flower, Grid or server; no Hydra
    or OmegaConf (the schema's dataclasses a recipe carries need neither); no torch._dynamo."""
    code = (
        "import sys; import fedge.simulations.worker, fedge.client.torch_trainer, fedge.tasks.digits; "
        "print(sorted(m for m in sys.modules if m in ('flwr', 'hydra', 'omegaconf', 'torch._dynamo') "
        "or m.startswith(('flwr.', 'fedge.server', 'ray'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


_PREPARED = """
import json, sys
from fedge.conf.cli import HydraApp, run
from fedge.conf.schema import register_configs
from fedge.simulations import sim_app

register_configs()
events = []

def fork_server_running():
    import os, pathlib
    def child_cmdline(proc):
        try:
            ppid = int(proc.joinpath('stat').read_text().rsplit(')', 1)[1].split()[1])
            return proc.joinpath('cmdline').read_bytes() if ppid == os.getpid() else b''
        except (OSError, ValueError, IndexError):
            return b''  # a process that ended while the table was read
    procs = [p for p in pathlib.Path('/proc').iterdir() if p.name.isdigit()]
    return any(b'multiprocessing.forkserver import main' in child_cmdline(p) for p in procs)

def prepare(cfg):
    sim_app.prepare(cfg)
    events.append(['prepare', 'torch' in sys.modules, fork_server_running()])

def job(cfg):
    events.append(['job', cfg.num_clients])

app = HydraApp(prog='t', job=job, summary='', examples=[], writes='', check=sim_app.check, prepare=prepare)
try:
    run(app, {args!r})
except SystemExit as exc:
    events.append(['exit', exc.code])
print('RESULT ' + json.dumps(events))
"""


@pytest.mark.parametrize(
    "args, events",
    [
        # accepted: the workers' fork server is started before the job, without torch in this process
        (["num_clients=3"], [["prepare", False, True], ["job", 3]]),
        (["backend.num_workers=0"], [["prepare", False, False], ["job", 10]]),  # no workers: no fork server
        (["num_clients=1"], [["exit", 2]]),  # refused: nothing started
    ],
)
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_fork_server_starts_once_the_config_is_checked_before_the_job(tmp_path, args, events):
    done = subprocess.run(
        [sys.executable, "-c", _PREPARED.format(args=[*args, f"hydra.run.dir={tmp_path / 'run'}"])],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert json.loads(done.stdout.rsplit("RESULT ", 1)[1]) == events, done.stderr[-2000:]


@pytest.mark.parametrize(
    "args, early",
    [
        (["num_clients=1"], True),  # a plain run (refused later by its checks): started before Hydra's import
        (["--help"], False),
        (["backend=ray", "num_clients=1"], False),  # another backend: only once the config is checked
        (["--cfg", "job"], False),
    ],
)
def test_fedge_sim_starts_the_fork_server_before_hydra_only_for_a_plain_local_run(tmp_path, args, early):
    result, stderr = _sim(args, tmp_path)
    assert result["early_starts"] == ([[]] if early else [])  # nothing of Hydra, OmegaConf, Flower or torch yet
    assert "torch" not in result["loaded"]  # the server process itself never imported torch for it
    if args[0] == "num_clients=1":
        assert result["code"] == 2 and "num_clients" in stderr  # the refusal reads as before
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args, early",
    [([], True), (["rounds=3", "+x=1"], True), (["backend.num_workers=0"], False), (["-m", "rounds=1,2"], False)],
)
def test_the_early_start_is_guessed_from_the_command_line_alone(args, early):
    from fedge.simulations.sim_cli import starts_fork_server_early

    assert starts_fork_server_early(args) is early

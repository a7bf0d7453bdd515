"""The report's figures drawn by a forked child beside this process (where it holds no
torch) are the figures drawn one after another, byte for byte; a child that fails is
named; the warm-up thread is waited for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_report import FAST, PNGS, fedge_sim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parallel figure is forked (Linux)")

_RENDER = """
import json, resource, sys
from pathlib import Path
import fedge.simulations.report as report
run, out = Path(sys.argv[1]), Path(sys.argv[2])
report.start_warm_up()  # make_report waits for it: then no thread but this one, the figure is forked
report.make_report([run], out / "parallel")
forks = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime > 0  # a child drew a figure and ended
report.render.__defaults__ = (False,)
report.make_report([run], out / "serial")
print('RESULT ' + json.dumps({'forks': forks, 'torch': 'torch' in sys.modules}))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("render")
    proc = fedge_sim(tmp, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_parallel_figures_are_the_serial_ones(run_dir, tmp_path):
    done = subprocess.run([sys.executable, "-c", _RENDER, str(run_dir), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout.rsplit("RESULT ", 1)[1]) == {"forks": True, "torch": False}, done.stderr[-2000:]
    for name in (*PNGS, "report.md", "clients.csv"):
        parallel, serial = (tmp_path / side / name for side in ("parallel", "serial"))
        assert parallel.read_bytes() == serial.read_bytes(), name


_FAILING = """
import sys
from pathlib import Path
import fedge.simulations.report as report
def broken(runs, path):
    raise ValueError('no figure today')
def fine(path):
    path.write_text('drawn')
out = Path(sys.argv[1])
try:
    report.render([(broken, (None, out / 'broken.png')), (fine, (out / 'fine.png',))])
except RuntimeError as exc:
    print('RESULT', exc)
"""


def test_a_failing_figure_child_is_named(tmp_path):
    done = subprocess.run([sys.executable, "-c", _FAILING, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert f"RESULT drawing {tmp_path / 'broken.png'} failed (exit code 1)" in done.stdout, done.stderr[-2000:]
    assert "no figure today" in done.stderr  # the child's traceback
    assert (tmp_path / "fine.png").read_text() == "drawn"  # the others were drawn meanwhile

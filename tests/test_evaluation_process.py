"""The default fedge-sim run keeps torch out of its server process: the initial model and
central evaluation run in a child forked by the workers' fork server
(:mod:`fedge.simulations.evaluation_process`), with the same initial weights, bit for bit,
and the same accuracy as in the server process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedge.server.evaluation import CentralEvaluator
from fedge.simulations.evaluation_process import ALIGNMENT, EvaluationProcess, aligned_split, torch_free_server
from fedge.simulations.fork_server import worker_context

pytestmark = pytest.mark.skipif(
    worker_context().get_start_method() != "forkserver", reason="the evaluation process is forked by the fork server"
)

_RUN = """
import json, sys
import fedge.simulations.experiment as experiment
seen = []
original = experiment.run_federation
def run_federation(*args, on_round=None, **kwargs):
    def record(r):
        seen.append(['round', r.round, 'torch' in sys.modules])
        if on_round is not None:
            on_round(r)
    return original(*args, on_round=record, **kwargs)
experiment.run_federation = run_federation
sys.argv = ['fedge-sim', *{args!r}]
from fedge.simulations.sim_cli import main
try:
    main()
except SystemExit as exc:
    seen.append(['exit', exc.code])
seen.append(['end', 'torch' in sys.modules])
print('RESULT ' + json.dumps(seen))
"""


def test_default_run_never_imports_torch_in_the_server_process(tmp_path):
    """Before round 1 and to the end of the run, report included (``fedge-sim``, two rounds)."""
    args = ["rounds=2", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-c", _RUN.format(args=args)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    events = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    assert events == [["round", 0, False], ["round", 1, False], ["round", 2, False], ["end", False]], done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2] and results["final"]["accuracy"] > 0.1
    assert (tmp_path / "run" / "report.md").is_file()


@pytest.mark.parametrize(
    "overrides, torch_free",
    [
        ([], True),
        (["shape=lowrank", "shape.lowrank.rank=4"], False),  # shaping builds the model in the server
        (["attack=backdoor"], False),  # the backdoor evaluator
        (["mode=async"], False),  # FedBuff's simulated fleet evaluates in the server
        (["backend.num_workers=0"], False),  # clients train in the server process: torch is there anyway
        (["backend=ray"], False),
    ],
)
def test_torch_free_server_where_nothing_needs_torch_in_the_server(make_cfg, overrides, torch_free):
    assert torch_free_server(make_cfg(overrides)) is torch_free


def test_initial_weights_are_the_server_processes_bit_for_bit(make_cfg):
    from fedge.conf.build import build_task
    from fedge.conf.shaping import shape_experiment

    cfg = make_cfg(["seed=3"])
    task, data, _ = build_task(cfg)
    in_process = shape_experiment(cfg, task).initial
    with EvaluationProcess(task, data.test, 3) as process:
        child = process.initial_weights()
    assert list(child) == list(in_process)  # the model's state order
    for name, tensor in in_process.items():
        assert child[name].dtype == tensor.numpy().dtype and np.array_equal(child[name], tensor.numpy()), name
    record, expected = ArrayRecord({k: Array(v) for k, v in child.items()}), ArrayRecord(in_process)
    assert [(k, a.data) for k, a in record.items()] == [(k, a.data) for k, a in expected.items()]


def test_evaluation_is_the_central_evaluators(make_cfg):
    from fedge.conf.build import build_task

    cfg = make_cfg([])
    task, data, _ = build_task(cfg)
    here = CentralEvaluator(task, aligned_split(data.test), 0)
    unaligned = CentralEvaluator(task, data.test, 0)
    with EvaluationProcess(task, data.test, 0) as process:
        initial = process.initial_weights()
        trained = {k: v + np.float32(0.01) * np.sign(v) for k, v in initial.items()}
        for weights in (initial, trained):
            loss, accuracy = process(ArrayRecord({k: Array(v) for k, v in weights.items()}))
            assert (loss, accuracy) == here.evaluate_weights(weights)
            other_loss, other_accuracy = unaligned.evaluate_weights(weights)
            assert accuracy == other_accuracy and loss == pytest.approx(other_loss, rel=1e-6)  # summation order only


def test_a_failed_evaluation_names_the_cause_and_the_child_keeps_serving(make_cfg):
    from fedge.conf.build import build_task

    task, data, _ = build_task(make_cfg([]))
    with EvaluationProcess(task, data.test, 0) as process:
        initial = process.initial_weights()
        with pytest.raises(RuntimeError, match="the evaluation process failed(.|\n)*Missing key"):
            process.evaluate_weights({k: v for k, v in list(initial.items())[1:]})
        assert 0.0 <= process.evaluate_weights(initial)[1] <= 1.0


def test_aligned_split_copies_onto_the_alignment():
    from fedge.tasks.base import Split

    x = np.arange(4 * 65, dtype=np.float32)[1:].reshape(37, 7)  # a view 4 bytes past its buffer's start
    split = aligned_split(Split(x, np.arange(37)))
    assert split.x.ctypes.data % ALIGNMENT == 0 and split.y.ctypes.data % ALIGNMENT == 0
    assert np.array_equal(split.x, x) and split.x.dtype == x.dtype and np.array_equal(split.y, np.arange(37))


def test_evaluation_process_ends_with_close(make_cfg):
    from fedge.conf.build import build_task

    task, data, _ = build_task(make_cfg([]))
    process = EvaluationProcess(task, data.test, 0)
    process.initial_weights()
    process.close()
    with pytest.raises((RuntimeError, OSError)):
        process.evaluate_weights({})


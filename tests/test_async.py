"""Asynchronous buffered aggregation (FedBuff, issue 13): the core and the simulation.

Must-show 2 (same seed: same event order and bit-identical weights, twice and on ray)
and must-show 3 (FedAdam + topk + error feedback reaches 0.93) are here; the trace
format (must-show 5) is in test_async_trace.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum, QFedAvg

from conftest import FAST
from fedge.conf.build import ConfigError
from fedge.protos import records
from fedge.protos.codecs import encode_update
from fedge.protos.v1 import tensor_pb2
from fedge.server.identity import ensure_task_identity
from fedge.simulations.experiment import run_experiment
from fedge.strategies import CompressedStrategy
from fedge.strategies.async_state import AsyncState
from fedge.strategies.fedbuff import FedBuffAggregator, check_linear
from fedge.strategies.fedbuff_config import FedBuffConfig
from fedge.strategies.staleness import StalenessRule

MIX = "device=mix_wearable_phone_gateway"
#: A small async run: 6 clients of the 60/30/10 fleet with a speed spread, K=2, 3 in flight.
ASYNC = ["mode=async", MIX, "device.speed_sigma=0.5", "num_clients=6", "mode.buffer_size=2",
         "mode.concurrency=3", "client.local_epochs=1", "progress=false", "seed=4"]


def test_staleness_rules():
    poly = StalenessRule("polynomial", 0.5)
    assert poly.weight(0) == 1.0 and poly.weight(3) == pytest.approx(0.5) and poly.weight(8) == pytest.approx(1 / 3)
    assert StalenessRule("polynomial", 1.0).weight(4) == pytest.approx(0.2)
    assert StalenessRule("constant").weight(50) == 1.0
    with pytest.raises(ValueError, match="one of"):
        StalenessRule("hinge")
    with pytest.raises(ValueError, match="mode.buffer_size must be >= 1"):
        FedBuffConfig(buffer_size=0).check()


@pytest.mark.parametrize(
    ("strategy", "why"),
    [(FedMedian(), "median"), (FedTrimmedAvg(), "trims"), (Krum(), "distances"), (Bulyan(), "selects and trims"),
     (QFedAvg(client_learning_rate=0.1), "loss")],
)
def test_nonlinear_strategies_are_refused_with_the_reason(strategy, why):
    with pytest.raises(ValueError, match=f"weighted sum of the replies.*{type(strategy).__name__} .*{why}"):
        check_linear(strategy)


def test_the_flwr_free_list_of_linear_strategies_is_the_checked_one():
    from fedge.strategies.fedbuff import LINEAR_STRATEGIES
    from fedge.strategies.fedbuff_config import LINEAR_STRATEGY_NAMES

    assert tuple(cls.__name__ for cls in LINEAR_STRATEGIES) == LINEAR_STRATEGY_NAMES


def test_nonlinear_strategy_refused_by_fedge_sim(make_cfg):
    with pytest.raises(ConfigError, match="FedMedian takes a coordinate-wise median"):
        run_experiment(make_cfg([*ASYNC, "strategy=fedmedian", "rounds=1"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [("secagg=on", "cannot use secagg"), ("server.round_deadline_s=2", "round_deadline_s must be 0"),
     ("device=none", "simulates time from device profiles"), ("mode.concurrency=9", "exceeds num_clients"),
     ("mode.staleness=linear", "mode.staleness must be one of")],
)
def test_async_settings_that_cannot_work_are_named(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(make_cfg([*ASYNC, override]))


def _events(outcome):
    section = outcome.result
    return [(s.step, s.time_s, tuple(s.nodes), tuple(s.staleness)) for s in section.steps]


def test_same_seed_same_event_order_and_bit_identical_weights(make_cfg):
    """Must-show 2, first half: twice with one seed (once in-process, once on two worker
    processes) -> the same events at the same simulated times and equal weights."""
    first = run_experiment(make_cfg([*ASYNC, "rounds=6", "backend.num_workers=0"]))
    second = run_experiment(make_cfg([*ASYNC, "rounds=6", "backend.num_workers=2"]))
    assert _events(first) == _events(second)
    assert len(first.result.steps) == 6
    stale = [s for step in first.result.steps for s in step.staleness]
    assert max(stale) > 0  # updates really arrived stale and were weighted
    for name in first.final_weights:
        assert np.array_equal(first.final_weights[name], second.final_weights[name]), name
    other = run_experiment(make_cfg([*ASYNC, "rounds=6", "backend.num_workers=0", "seed=5"]))
    assert _events(other) != _events(first)


def test_ray_matches_local(make_cfg):
    """Must-show 2, second half: backend=ray gives the local run's events and weights."""
    pytest.importorskip("ray")
    from fedge.simulations.ray_grid import start_ray

    import ray

    started = start_ray(None, num_cpus=2)
    try:
        on_ray = run_experiment(make_cfg([*ASYNC, "rounds=4", "backend=ray", "backend.num_actors=2"]))
    finally:
        if started:
            ray.shutdown()
    local = run_experiment(make_cfg([*ASYNC, "rounds=4", "backend.num_workers=0"]))
    assert _events(on_ray) == _events(local)
    for name in local.final_weights:
        assert np.array_equal(on_ray.final_weights[name], local.final_weights[name]), name


def test_fedadam_buffer_with_topk_and_error_feedback_reaches_093(make_cfg, tmp_path):
    """Must-show 3: FedAdam aggregates the buffer, devices send top-1% updates with error feedback."""
    outcome = run_experiment(
        make_cfg(["mode=async", MIX, "strategy=fedadam", "compression=topk", "progress=false",
                  "backend.num_workers=0", "rounds=80", "mode.stop_accuracy=0.93"]),
        out_dir=tmp_path,
    )
    assert outcome.result.final.accuracy >= 0.93
    assert outcome.result.stopped.startswith("reached accuracy")
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["compression"]["error_feedback"] is True
    assert results["dropped_replies"] == []
    section = results["async"]
    assert section["applied"] == sum(len(s["staleness"]) for s in section["steps"])
    assert sum(section["staleness_histogram"]) == section["applied"]
    # every byte on the wire was top-k coded: an update is a few % of the dense fp32 model
    dense = sum(v.nbytes for v in outcome.final_weights.values())
    assert results["final"]["uplink_bytes"] < 0.1 * dense * len(section["steps"][-1]["nodes"])


def test_downlink_deltas_and_frozen_layers_keep_working(make_cfg):
    """Per-device downlink deltas (q8 with server error feedback) and a frozen first layer:
    every reply decodes (a device holding another version would refuse the delta), the
    frozen tensors stay bit-identical, the model learns."""
    outcome = run_experiment(make_cfg([*ASYNC, "compression=downlink_q8", "rounds=8", "backend.num_workers=0",
                                       "client.freeze=[features.0.*]", "seed=0"]))
    steps = outcome.result.steps
    assert sum(s.lost + s.refused for s in steps) == 0
    assert outcome.result.final.accuracy > outcome.result.rounds[0].accuracy + 0.1
    import torch

    from fedge.tasks.digits import DigitsTask

    torch.manual_seed(0)
    initial = DigitsTask().build_model().state_dict()
    frozen = [k for k in outcome.final_weights if k.startswith("features.0.")]
    assert frozen
    for name in frozen:
        assert np.array_equal(outcome.final_weights[name], initial[name].numpy()), name


def test_updates_past_max_staleness_are_dropped_and_counted(make_cfg):
    outcome = run_experiment(make_cfg([*ASYNC, "mode.max_staleness=0", "rounds=6", "backend.num_workers=0"]))
    steps = outcome.result.steps
    assert all(s == 0 for step in steps for s in step.staleness)
    assert sum(step.discarded_stale for step in steps) > 0


def _aggregator(compressed: CompressedStrategy, k: int = 2) -> FedBuffAggregator:
    ensure_task_identity()
    initial = ArrayRecord({"w": Array(np.zeros(4, np.float32)), "b": Array(np.zeros(1, np.float32))})
    return FedBuffAggregator(compressed, FedBuffConfig(buffer_size=k, concurrency=2, max_staleness=1),
                             initial, ConfigRecord({"lr": 0.1}), [1, 2, 3])


def _reply(instruction: Message, delta: dict[str, np.ndarray], examples: int = 10, base: int | None = None) -> Message:
    dispatch = FedBuffAggregator.dispatch_of(instruction)
    update = encode_update(delta, "fp32", tensor_pb2.UPDATE_KIND_DELTA, base_round=dispatch - 1 if base is None else base)
    content = RecordDict({records.METRICS_RECORD: MetricRecord({"num-examples": examples}),
                          records.UPDATE_RECORD: ConfigRecord({records.PAYLOAD: update.SerializeToString()})})
    return Message(content, reply_to=instruction)


def test_buffer_weights_stale_deltas_and_fedavg_applies_them():
    """FedAvg over the buffer = x + sum n_i w_i delta_i / sum n_i, staleness from versions."""
    agg = _aggregator(CompressedStrategy(FedAvg(min_available_nodes=2)))
    first, second, third = agg.instruction(1), agg.instruction(2), agg.instruction(3)
    ones = {"w": np.ones(4, np.float32), "b": np.ones(1, np.float32)}
    assert agg.receive(agg.dispatch_of(first), _reply(first, ones)).kept
    assert agg.receive(agg.dispatch_of(second), _reply(second, {k: 3 * v for k, v in ones.items()})).kept
    step = agg.aggregate()
    assert step.version == 1 and step.staleness == [0, 0]
    np.testing.assert_allclose(agg.state.model["w"], 2.0)
    # the third device trained from version 0: staleness 1, weight 1/sqrt(2)
    arrival = agg.receive(agg.dispatch_of(third), _reply(third, ones))
    assert arrival.kept and arrival.staleness == 1 and arrival.weight == pytest.approx(2**-0.5)
    fourth = agg.instruction(1)
    agg.receive(agg.dispatch_of(fourth), _reply(fourth, ones, examples=30))
    agg.aggregate()
    np.testing.assert_allclose(agg.state.model["w"], 2.0 + (10 * 2**-0.5 + 30) / 40, rtol=1e-6)


def test_hostile_replies_are_refused_with_reasons_and_the_model_stays():
    compressed = CompressedStrategy(FedAvg(min_available_nodes=2))
    agg = _aggregator(compressed)
    before = {k: v.copy() for k, v in agg.state.model.items()}
    a, b, c = agg.instruction(1), agg.instruction(2), agg.instruction(3)
    nan = agg.receive(agg.dispatch_of(a), _reply(a, {"w": np.full(4, np.nan, np.float32), "b": np.zeros(1, np.float32)}))
    wrong_base = agg.receive(agg.dispatch_of(b), _reply(b, {"w": np.ones(4, np.float32), "b": np.ones(1, np.float32)}, base=7))
    shape = agg.receive(agg.dispatch_of(c), _reply(c, {"w": np.ones(5, np.float32), "b": np.ones(1, np.float32)}))
    unknown = agg.receive(999, _reply(c, {"w": np.ones(4, np.float32), "b": np.ones(1, np.float32)}))
    assert [x.kept for x in (nan, wrong_base, shape, unknown)] == [False] * 4
    assert "NaN or Inf" in nan.reason and "relative to round 7" in wrong_base.reason and "shape" in shape.reason
    assert "unknown dispatch" in unknown.reason
    assert len(compressed.log.dropped) == 3 and not agg.ready()
    for k in before:
        assert np.array_equal(agg.state.model[k], before[k])


def test_fedadam_gets_the_current_model_and_state_round_trips_a_checkpoint():
    agg = _aggregator(CompressedStrategy(FedAdam(min_available_nodes=2)))
    pending = [agg.instruction(n) for n in (1, 2, 3)]
    for message in pending[:2]:
        agg.receive(agg.dispatch_of(message), _reply(message, {"w": np.ones(4, np.float32), "b": np.ones(1, np.float32)}))
    agg.aggregate()
    assert agg.version == 1 and np.all(agg.state.model["w"] > 0)
    follow = agg.instruction(1)
    agg.receive(agg.dispatch_of(pending[2]), _reply(pending[2], {"w": np.ones(4, np.float32), "b": np.ones(1, np.float32)}))
    description, arrays = agg.checkpoint()
    restored = AsyncState.from_checkpoint(description["state"], arrays)
    assert restored.version == 1 and set(restored.inflight) == {agg.dispatch_of(follow)}
    assert len(restored.buffer) == 1 and restored.buffer[0].staleness == 1
    assert np.array_equal(restored.buffer[0].delta["w"], agg.state.buffer[0].delta["w"])
    assert np.array_equal(restored.model["w"], agg.state.model["w"])
    assert set(restored.references) == set(agg.state.references)


def test_results_and_report_show_steps_staleness_and_sync_and_async_on_one_time_axis(make_cfg, tmp_path):
    """results.json: per step simulated time, version, staleness, accuracy and a histogram;
    fedge-report: staleness.png, per-step tables, one accuracy-vs-simulated-time plot."""
    import json

    from fedge.simulations.report import load_runs, make_report
    from test_report import assert_real_png

    run_experiment(make_cfg([*ASYNC, "rounds=4", "backend.num_workers=0"]), out_dir=tmp_path / "async")
    run_experiment(make_cfg([*ASYNC[1:], "rounds=2", "backend.num_workers=0"]), out_dir=tmp_path / "sync")
    section = json.loads((tmp_path / "async" / "results.json").read_text())["async"]
    steps = section["steps"]
    assert [s["version"] for s in steps] == [1, 2, 3, 4]
    assert all(s["time_s"] > 0 and len(s["staleness"]) == 2 and 0 <= s["accuracy"] <= 1 for s in steps)
    assert [s["time_s"] for s in steps] == sorted(s["time_s"] for s in steps)
    assert sum(section["staleness_histogram"]) == section["applied"] == 8
    report = make_report([tmp_path / "async", tmp_path / "sync"], tmp_path / "report")
    text = report.read_text()
    assert "Async (FedBuff): K=2, concurrency 3" in text and "| step | sim s | version |" in text
    assert_real_png(tmp_path / "report" / "staleness.png")
    assert_real_png(tmp_path / "report" / "accuracy_vs_sim_time.png")
    runs = load_runs([tmp_path / "async", tmp_path / "sync"])
    assert all(run.simulated for run in runs)
    async_run = next(run for run in runs if "async" in run.label)
    assert async_run.cumulative_sim_s()[-1] == pytest.approx(steps[-1]["time_s"])

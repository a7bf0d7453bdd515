"""Device profiles, simulated round time and energy, availability, the round deadline (issue 4, must-show 5)."""

import json

import numpy as np
import pytest

from conftest import FAST
from fedge.client import EdgeClient, TrainConfig
from fedge.simulations.devices.profile import DeviceProfile
from fedge.client.model_io import model_arrays
from fedge.server.delivery_observer import TrainingDelivery
from fedge.simulations.devices.simulator import DeviceSimulator
from fedge.conf.build import ConfigError
from fedge.simulations.experiment import run_experiment
from fedge.simulations.clients import ClientRecipe
from fedge.simulations.devices.fleet import assign_profiles, profile_counts
from fedge.tasks.digits import DigitsTask
from fedge.simulations.report import make_report
from test_edge_client import make_task
from test_report import assert_real_png

MIX = "device=mix_wearable_phone_gateway"


def _profile(name: str, cfg: dict) -> DeviceProfile:
    return DeviceProfile(**{**cfg["device"]["profiles"][name], "name": name})


def test_profile_prices_bytes_and_samples_and_names_bad_values():
    p = DeviceProfile(samples_per_s=100, downlink_mbps=8, uplink_mbps=2, joules_per_sample=0.5,
                      joules_per_byte_down=1e-6, joules_per_byte_up=3e-6)
    # 1e6 B down at 8 Mbit/s = 1 s, 200 samples at 100/s = 2 s, 5e5 B up at 2 Mbit/s = 2 s
    assert p.round_seconds(1_000_000, 200, 500_000) == pytest.approx(5.0)
    assert p.energy_joules(1_000_000, 200, 500_000) == pytest.approx(100 + 1 + 1.5)
    with pytest.raises(ValueError, match="'w'.*uplink_mbps must be > 0, got 0.*availability must be a probability"):
        DeviceProfile(name="w", uplink_mbps=0, availability=1.5)
    with pytest.raises(ValueError, match=r"online_hours must be hours 0-23, got \[24\]"):
        DeviceProfile(online_hours=[3, 24])


def test_mix_gives_exact_counts_dealt_reproducibly_from_the_seed():
    profiles = {n: DeviceProfile(name=n) for n in ("wearable", "phone", "gateway")}
    mix = {"wearable": 0.6, "phone": 0.3, "gateway": 0.1}
    assert profile_counts(mix, 10) == {"wearable": 6, "phone": 3, "gateway": 1}
    assert sum(profile_counts(mix, 7).values()) == 7
    nodes = list(range(1000, 1010))
    first = {n: p.name for n, p in assign_profiles(profiles, mix, nodes, seed=0).items()}
    assert first == {n: p.name for n, p in assign_profiles(profiles, mix, nodes, seed=0).items()}
    assert sorted(first.values()).count("wearable") == 6
    assert first != {n: p.name for n, p in assign_profiles(profiles, mix, nodes, seed=1).items()}
    with pytest.raises(ValueError, match=r"unknown profile\(s\) \['watch'\]"):
        assign_profiles(profiles, {"watch": 1.0}, nodes, 0)
    with pytest.raises(ValueError, match="shares must sum to 1, got 0.9"):
        assign_profiles(profiles, {"wearable": 0.6, "phone": 0.3}, nodes, 0)


def test_deadline_drops_exactly_the_jobs_past_it():
    slow = DeviceProfile(name="slow", samples_per_s=10, downlink_mbps=8, uplink_mbps=8)
    sim = DeviceSimulator({1: slow, 2: slow, 3: slow}, deadline_s=2.0)
    # 1 s of bytes each way is 1e6 B at 8 Mbit/s; samples add 0.1 s each
    jobs = [TrainingDelivery(1, 500_000, 500_000, 9), TrainingDelivery(2, 500_000, 500_000, 10), TrainingDelivery(3, 500_000, 500_000, 11)]
    verdicts = sim.settle(1, jobs)
    assert verdicts[0] == pytest.approx(1.9) and verdicts[1] == pytest.approx(2.0) and verdicts[2] is None
    record = sim.rounds[1]
    assert record.stragglers == 1 and record.time_s == 2.0  # the server waited until the deadline
    # the straggler's download and training are spent; its upload never arrives
    assert sim.totals[3].sim_busy_s == pytest.approx(0.5 + 1.1) and sim.totals[3].stragglers == 1


def test_availability_probability_and_daily_schedule_are_reproducible():
    nodes = range(500)
    sim = DeviceSimulator({n: DeviceProfile(availability=0.3) for n in nodes}, seed=7)
    online = [[sim.is_available(n, r) for n in nodes] for r in range(1, 11)]
    share = np.mean(online)
    assert 0.27 < share < 0.33, share
    again = DeviceSimulator({n: DeviceProfile(availability=0.3) for n in nodes}, seed=7)
    assert online == [[again.is_available(n, r) for n in nodes] for r in range(1, 11)]
    other = DeviceSimulator({n: DeviceProfile(availability=0.3) for n in nodes}, seed=8)
    assert online != [[other.is_available(n, r) for n in nodes] for r in range(1, 11)]
    # A nightly window on a clock that starts at 22:00 and runs one round per hour.
    night = DeviceSimulator({1: DeviceProfile(online_hours=[22, 23, 0])}, start_hour=22, round_interval_s=3600)
    seen = []
    for r in range(1, 6):
        seen.append((night.hour_of(r), night.is_available(1, r)))
        night.settle(r, [])
    assert seen == [(22, True), (23, True), (0, True), (1, False), (2, False)]


def test_profile_memory_becomes_the_client_budget():
    task = DigitsTask(model="mobilenet", width=32)
    data = task.load()
    recipe = ClientRecipe(task, {1: np.arange(128), 2: np.arange(128)}, TrainConfig(local_steps=1, batch_size=64),
                          memory_mb={1: 0.5})
    recipe._data = data
    assert recipe.client(1).defaults.memory_mb == 0.5 and recipe.client(2).defaults.memory_mb == 0.0
    client = recipe.client(1)
    weights = model_arrays(client.model)
    # The round config (client.memory_mb=0, or a looser 100) cannot lift the device's own budget.
    for config in ({"client.memory_mb": 0.0}, {"client.memory_mb": 100.0}):
        update = client.handle(make_task(weights, config=config))
        assert "memory budget 0.5 MB is too small" in update.error
    assert not recipe.client(2).handle(make_task(weights, config={"client.memory_mb": 0.0})).error


def _run(make_cfg, tmp_path, *overrides):
    outcome = run_experiment(make_cfg([*FAST, *overrides]), tmp_path)
    return outcome, json.loads((tmp_path / "results.json").read_text())


def test_profiles_change_round_time_and_energy_by_the_formula(make_cfg, tmp_path):
    _, plain = _run(make_cfg, tmp_path / "none", "rounds=1")
    assert plain["rounds"][1]["sim_round_s"] is None and plain["rounds"][1]["energy_j"] is None
    always_on = [f"device.profiles.{p}.availability=1.0" for p in ("wearable", "phone", "gateway")]
    _, phones = _run(make_cfg, tmp_path / "phone", "rounds=1", "device=phone", "device.profiles.phone.availability=1.0")
    _, mix = _run(make_cfg, tmp_path / "mix", "rounds=1", MIX, *always_on)
    # The same training: every client trained one epoch over its data, whatever its profile.
    pool = sum(c["train_samples"] for c in phones["clients"].values())
    assert pool == sum(c["train_samples"] for c in mix["clients"].values()) == len(DigitsTask().load().train)
    for results in (phones, mix):
        cfg, clients, record = results["config"], results["clients"], results["rounds"][1]
        times, energy = [], 0.0
        for c in clients.values():
            p = _profile(c["profile"], cfg)
            # one round: a client's totals are that round's measured serialised bytes and samples
            times.append(c["downlink_bytes"] * 8 / (p.downlink_mbps * 1e6) + c["train_samples"] / p.samples_per_s
                         + c["uplink_bytes"] * 8 / (p.uplink_mbps * 1e6))
            spent = (c["train_samples"] * p.joules_per_sample + c["downlink_bytes"] * p.joules_per_byte_down
                     + c["uplink_bytes"] * p.joules_per_byte_up)
            assert c["sim_busy_s"] == pytest.approx(times[-1]) and c["energy_j"] == pytest.approx(spent)
            energy += spent
        assert record["sim_round_s"] == pytest.approx(max(times))
        assert record["energy_j"] == pytest.approx(energy)
        assert record["uplink_bytes"] == sum(c["uplink_bytes"] for c in clients.values()) > 0
    assert sorted(c["profile"] for c in mix["clients"].values()).count("wearable") == 6
    # Wearables on Bluetooth LE make the mix's round several times slower than all-phones.
    assert mix["rounds"][1]["sim_round_s"] > 5 * phones["rounds"][1]["sim_round_s"]
    assert mix["rounds"][1]["energy_j"] != pytest.approx(phones["rounds"][1]["energy_j"])
    # fedge-report shows them: simulated columns, per-client profiles, time-to-accuracy plot.
    text = make_report([tmp_path / "phone", tmp_path / "mix", tmp_path / "none"], tmp_path / "report").read_text()
    assert "| sim s | energy J | stragglers | offline |" in text and "| profile |" in text
    assert f"{mix['rounds'][1]['sim_round_s']:.2f}" in text
    assert_real_png(tmp_path / "report" / "accuracy_vs_sim_time.png")


def test_deadline_drops_slow_wearables_and_the_run_reaches_its_target(make_cfg, tmp_path):
    # 30% wearables (~8.9 s a round over BLE), phones and gateways well under 1 s; deadline 2 s.
    outcome, results = _run(
        make_cfg, tmp_path, MIX, "device.mix.wearable=0.3", "device.mix.phone=0.6", "server.round_deadline_s=2",
        "rounds=12", "client.local_epochs=2",
    )
    clients = results["clients"]
    wearables = [c for c in clients.values() if c["profile"] == "wearable"]
    others = [c for c in clients.values() if c["profile"] != "wearable"]
    assert len(wearables) == 3
    for c in wearables:  # every task a wearable got was dropped; its uplink never counted
        assert c["tasks"] > 0 and c["stragglers"] == c["tasks"] and c["replies"] == 0 and c["uplink_bytes"] == 0
        assert c["sim_busy_s"] / c["tasks"] > 2.0  # even without the upload it is past the deadline
    assert all(c["stragglers"] == 0 and c["replies"] == c["tasks"] for c in others)
    rounds = results["rounds"][1:]
    assert sum(r["stragglers"] for r in rounds) == sum(c["tasks"] for c in wearables)
    assert sum(r["unavailable"] for r in rounds) == sum(c["unavailable"] for c in clients.values()) > 0
    for r in rounds:
        assert r["sim_round_s"] == (2.0 if r["stragglers"] else r["sim_round_s"]) and r["sim_round_s"] <= 2.0
        assert r["failures"] == r["stragglers"] + r["unavailable"]
        assert r["replies"] == 10 - r["failures"]
    assert outcome.result.final.accuracy >= 0.93  # the default run's target, without the wearables


def test_daily_schedule_in_a_run_moves_past_rounds_nobody_was_online(make_cfg, tmp_path):
    # Phones online only 22:00-22:59; the clock starts at 21:00, one round an hour.
    _, results = _run(make_cfg, tmp_path, "device=phone", "device.profiles.phone.availability=1.0",
                      "device.profiles.phone.online_hours=[22]", "device.start_hour=21", "device.round_interval_s=3600",
                      "rounds=3")
    rounds = results["rounds"][1:]
    assert [r["unavailable"] for r in rounds] == [10, 0, 10]
    assert [r["replies"] for r in rounds] == [0, 10, 0] and rounds[0]["downlink_bytes"] == 0
    initial = results["rounds"][0]["accuracy"]  # no replies: the global model stays as it was
    assert rounds[0]["accuracy"] == initial and rounds[2]["accuracy"] == rounds[1]["accuracy"] != initial


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ([MIX, "device.mix.wearable=0.7"], "device.mix shares must sum to 1, got 1.1"),
        ([MIX, "+device.mix.watch=0.0"], "unknown profile(s) ['watch']"),
        (["device=phone", "device.profiles.phone.uplink_mbps=0"], "device.profiles.phone: device profile 'phone': uplink_mbps must be > 0"),
        (["device=phone", "server.round_deadline_s=-1"], "server.round_deadline_s must be >= 0"),
        (["server.round_deadline_s=5"], "server.round_deadline_s=5 is simulated time and needs device profiles"),
        (["device=phone", "device.start_hour=25"], "device: start_hour must be in [0, 24)"),
    ],
)
def test_bad_device_config_is_named(make_cfg, overrides, needle):
    with pytest.raises(ConfigError) as err:
        run_experiment(make_cfg([*FAST, "rounds=1", *overrides]))
    assert needle in str(err.value)


def test_fedge_server_refuses_a_simulated_deadline(make_cfg):
    from fedge.server.serve import serve

    with pytest.raises(ConfigError, match=r"round_deadline_s=5 is simulated time .* server.round_timeout_s"):
        serve(make_cfg(["server.round_deadline_s=5", "server.insecure=true", "progress=false"]))


def test_fedge_client_takes_its_own_memory_budget(tmp_path, capsys):
    from fedge.client.client_cli import build_runtime, main as client_main, parser

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(2, int))
    base = ["--server", "127.0.0.1:1", "--task", "digits", "--data", str(data), "--insecure", "--device-id", "d"]
    assert build_runtime(parser().parse_args([*base, "--memory-mb", "64"])).defaults.memory_mb == 64.0
    assert build_runtime(parser().parse_args(base)).defaults is None
    assert client_main([*base, "--memory-mb", "-1"]) == 2
    assert "--memory-mb must be >= 0 (0 = no limit), got -1.0" in capsys.readouterr().err

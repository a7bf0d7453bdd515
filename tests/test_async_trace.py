"""Device traces drive an async run; a malformed trace is refused naming file, line and field
(issue 13, must-show 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge.conf.build import ConfigError
from fedge.simulations.devices.trace import TraceError, load_trace
from fedge.simulations.experiment import run_experiment

HEADER = "client,profile,samples_per_s,downlink_mbps,uplink_mbps,online"
#: Two gateways always online (~0.6 s a task), two phones online from 2 s, two watches
#: whose first interval ends at 1 s (a task running then is lost) and back from 4 s.
ROWS = [
    "0,gateway,300,100,50,",
    "1,gateway,320,100,50,",
    "2,phone,2000,20,5,2-1000000",
    "3,phone,1800,20,5,2-1000000",
    "4,watch,300,0.5,0.25,0-1 4-1000000",
    "5,watch,250,0.5,0.25,0-1 4-1000000",
]


def _trace(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    path = tmp_path / "fleet.csv"
    path.write_text("# fedge device trace v1\n" + header + "\n" + "\n".join(rows) + "\n")
    return path


def test_a_trace_drives_an_async_run(make_cfg, tmp_path):
    path = _trace(tmp_path, ROWS)
    outcome = run_experiment(
        make_cfg(["mode=async", f"device.trace={path}", "num_clients=6", "mode.buffer_size=2", "mode.concurrency=4",
                  "client.local_epochs=1", "progress=false", "backend.num_workers=0", "rounds=8"]),
        out_dir=tmp_path / "run",
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    profiles = {node: c["profile"] for node, c in results["clients"].items()}
    assert sorted(profiles.values()) == ["gateway", "gateway", "phone", "phone", "watch", "watch"]
    arrivals = outcome.result.steps
    assert arrivals and results["async"]["lost"] >= 1  # a watch's first task outlived its interval
    lost = [a for a in _arrivals(outcome) if a.reason.startswith("lost")]
    assert all("went offline at 1 s (trace)" in a.reason for a in lost)
    by_node = {int(n): p for n, p in profiles.items()}
    for arrival in _arrivals(outcome):  # phones only worked inside their interval
        if by_node[arrival.node_id] == "phone":
            assert arrival.time_s >= 2
    assert outcome.result.final.accuracy > outcome.result.rounds[0].accuracy


def _arrivals(outcome):
    from fedge.server.async_driver import AsyncFederationResult

    assert isinstance(outcome.result, AsyncFederationResult)
    return outcome.result.arrivals


@pytest.mark.parametrize(
    ("rows", "header", "where"),
    [
        (["0,gateway,fast,100,50,"] + ROWS[1:], HEADER, ":3: field 'samples_per_s': 'fast' is not a number"),
        (ROWS[:3] + ["3,phone,1800,-20,5,"] + ROWS[4:], HEADER, ":6: field 'downlink_mbps': '-20' must be > 0"),
        (ROWS[:4] + ["4,watch,300,0.5,0.25,40-3"] + ROWS[5:], HEADER, ":7: field 'online': '40-3' is not an interval"),
        (ROWS[:4] + ["4,watch,300,0.5,0.25,0-50 40-60"] + ROWS[5:], HEADER, ":7: field 'online': '40-60' starts before"),
        (ROWS[:5] + ["4,watch,300,0.5,0.25,"], HEADER, ":8: field 'client': client 4 has a row already"),
        (ROWS[:5] + ["9,watch,300,0.5,0.25,"], HEADER, ":8: field 'client': 9 is not in \\[0, 5\\]"),
        (ROWS[:2] + ["2,phone,2000,20"] + ROWS[3:], HEADER, ":5: row has 4 fields, the header 6"),
        (ROWS, HEADER.replace("uplink_mbps", "up_mbps"), ":2: header: missing \\['uplink_mbps'\\]"),
        (ROWS[:5], HEADER, ": no row for client\\(s\\) \\[5\\]"),
    ],
)
def test_a_malformed_trace_is_refused_naming_file_line_and_field(tmp_path, rows, header, where):
    path = _trace(tmp_path, rows, header)
    with pytest.raises(TraceError, match=f"^{path}{where}"):
        load_trace(path, 6)


def test_fedge_sim_refuses_a_malformed_trace_as_a_config_error(make_cfg, tmp_path):
    path = _trace(tmp_path, ["0,gateway,5000,100,50,nightly"] + ROWS[1:])
    with pytest.raises(ConfigError, match=f"{path}:3: field 'online': 'nightly'"):
        run_experiment(make_cfg(["mode=async", f"device.trace={path}", "num_clients=6", "progress=false"]))
    with pytest.raises(ConfigError, match="cannot read the trace"):
        run_experiment(make_cfg(["mode=async", f"device.trace={tmp_path}/missing.csv", "num_clients=6", "progress=false"]))


def test_a_trace_drives_a_sync_run_too(make_cfg, tmp_path):
    """Synchronous rounds: a traced device is reachable iff the round starts in one of its intervals."""
    path = _trace(tmp_path, ROWS)
    outcome = run_experiment(make_cfg([f"device.trace={path}", "num_clients=6", "client.local_epochs=1", "progress=false",
                                       "backend.num_workers=0", "rounds=2"]))
    first, second = outcome.result.rounds[1:]
    assert first.unavailable == 2 and first.replies == 4  # the phones come online at 2 s
    assert first.sim_round_s > 2 and second.unavailable == 0 and second.replies == 6


def test_speed_spread_is_lognormal_around_the_profile_and_seeded():
    import numpy as np

    from fedge.simulations.devices.profile import DeviceProfile
    from fedge.simulations.devices.speed import spread_speeds

    phone = DeviceProfile(name="phone", samples_per_s=2000, downlink_mbps=20, uplink_mbps=5)
    fleet = {1000 + i: phone for i in range(400)}
    assert spread_speeds(fleet, 0.0, seed=1) == fleet
    spread = spread_speeds(fleet, 0.5, seed=1)
    assert spread == spread_speeds(fleet, 0.5, seed=1) and spread != spread_speeds(fleet, 0.5, seed=2)
    speed = np.log([p.samples_per_s / 2000 for p in spread.values()])
    link = np.log([p.downlink_mbps / 20 for p in spread.values()])
    assert abs(np.median(speed)) < 0.1 and 0.4 < speed.std() < 0.6 and 0.4 < link.std() < 0.6
    assert all(p.uplink_mbps / 5 == pytest.approx(p.downlink_mbps / 20) for p in spread.values())  # one link factor
    assert abs(np.corrcoef(speed, link)[0, 1]) < 0.2  # compute and links spread independently
    assert {p.name for p in spread.values()} == {"phone"}
    with pytest.raises(ValueError, match="speed_sigma must be >= 0"):
        spread_speeds(fleet, -1.0, seed=0)

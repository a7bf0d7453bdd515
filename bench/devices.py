"""Device profiles and a round deadline on the default experiment (issue 4, must-show 5).

The default ``fedge-sim`` run (digits, 10 clients, Dirichlet 0.5, FedAvg, 20 rounds)
on simulated fleets: no profiles, all phones, the 60/30/10 wearable/phone/gateway mix
and a 30/60/10 mix, each mix with and without ``server.round_deadline_s=2`` (between
the phones' ~0.5 s and the wearables' ~9 s rounds). Per run: final accuracy, the
simulated seconds and joules of the whole run and up to the first round at the
accuracy target (0.93, the default run's), stragglers and offline devices::

    python -m bench.devices

writes ``bench/results/devices.json`` and ``bench/results/devices.md``. Every number
comes from the runs' ``results.json`` records (simulated time and energy are
deterministic: they follow from serialised bytes and trained samples).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from rich.console import Console

from fedge.simulations.experiment import run_experiment
from fedge.conf.schema import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.93  # the default run's accuracy target (tests/test_default_run.py)
DEADLINE = "server.round_deadline_s=2"
MIX = "device=mix_wearable_phone_gateway"
MIX_30 = (MIX, "device.mix.wearable=0.3", "device.mix.phone=0.6")
RUNS: dict[str, tuple[str, ...]] = {
    "none": (),
    "phone": ("device=phone",),
    "mix 60/30/10": (MIX,),
    "mix 60/30/10, deadline 2 s": (MIX, DEADLINE),
    "mix 30/60/10": MIX_30,
    "mix 30/60/10, deadline 2 s": (*MIX_30, DEADLINE),
}


def measure(overrides: tuple[str, ...]) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "progress=false", "backend.num_workers=0"])
    start = time.perf_counter()
    outcome = run_experiment(cfg, console=Console(file=io.StringIO()))
    wall = time.perf_counter() - start
    rounds = [r for r in outcome.result.rounds if r.round > 0]
    reached = next((r.round for r in rounds if r.accuracy >= TARGET), None)
    upto = [r for r in rounds if reached is not None and r.round <= reached]
    simulated = rounds[0].sim_round_s is not None
    return {
        "command": "fedge-sim " + " ".join(overrides),
        "final_accuracy": outcome.result.final.accuracy,
        "round_reaching_target": reached,
        "sim_s": sum(r.sim_round_s or 0.0 for r in rounds) if simulated else None,
        "sim_s_to_target": sum(r.sim_round_s or 0.0 for r in upto) if simulated and reached else None,
        "energy_j": sum(r.energy_j or 0.0 for r in rounds) if simulated else None,
        "energy_j_to_target": sum(r.energy_j or 0.0 for r in upto) if simulated and reached else None,
        "mean_replies": sum(r.replies for r in rounds) / len(rounds),
        "stragglers": sum(r.stragglers for r in rounds),
        "unavailable": sum(r.unavailable for r in rounds),
        "wall_s": round(wall, 1),
    }


def _cell(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(results: dict[str, dict]) -> str:
    lines = [
        f"# Device profiles and a deadline (digits, 10 clients, FedAvg, 20 rounds; target {TARGET})",
        "",
        "| fleet | final acc | round at target | sim s | sim s to target | energy J | energy J to target "
        "| replies/round | stragglers | offline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['final_accuracy']:.4f} | {_cell(r['round_reaching_target'], 'd')} | {_cell(r['sim_s'], '.1f')} "
            f"| {_cell(r['sim_s_to_target'], '.1f')} | {_cell(r['energy_j'], '.1f')} | {_cell(r['energy_j_to_target'], '.1f')} "
            f"| {r['mean_replies']:.1f} | {r['stragglers']} | {r['unavailable']} |"
        )
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in results.values()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="bench.devices", description=__doc__.split("\n\n")[0]).parse_args(argv)
    register_configs()
    torch.set_num_threads(1)
    results = {}
    for name, overrides in RUNS.items():
        results[name] = measure(overrides)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "devices.json").write_text(json.dumps({"target": TARGET, "runs": results}, indent=2) + "\n")
    (RESULTS / "devices.md").write_text(markdown(results))


if __name__ == "__main__":
    main()

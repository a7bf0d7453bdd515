"""What every micro-benchmark writes: the machine and its load, ``bench/results/<name>.{json,md}``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine(load_at_start: tuple[float, float, float], **versions: str) -> dict[str, object]:
    """CPUs, platform, library ``versions`` and the load averages at the start and now."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **versions,
            "load_avg_at_start": list(load_at_start), "load_avg_at_end": list(os.getloadavg())}


def load_note(machine: dict) -> list[str]:
    """The markdown lines that say how loaded the machine was (none if not recorded)."""
    if "load_avg_at_start" not in machine:
        return []
    start, end = machine["load_avg_at_start"][0], machine["load_avg_at_end"][0]
    return [
        f"Machine: {machine['cpus']} CPUs, 1-minute load average {start:.1f} at the start and {end:.1f} at the "
        "end (a load above the CPU count means other jobs shared them: throughput numbers are then low).",
        "",
    ]


def write(name: str, result: dict, markdown: str) -> None:
    """``bench/results/<name>.json`` and ``.md``; the markdown is printed too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)

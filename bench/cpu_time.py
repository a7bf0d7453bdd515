"""CPU seconds of a whole process tree, read from ``/proc`` (Linux).

A runtime's cost per client-round in CPU seconds does not depend on how busy the rest
of the machine is, where its wall clock does: on a shared machine it is the figure to
compare. The tree is a process and all its descendants alive at the moment of reading:
fedge's server, fork server and workers; Flower's driver, Ray's GCS, raylet, dashboard
and actor processes. Take differences between two readings inside a run (processes that
start or end in between are counted only while alive).

Written by hand: ``psutil`` would do it but is not a dependency of fedge or its bench.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or no /proc
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name: state, ppid, ...


def tree_cpu_s(root: int | None = None) -> float:
    """User + system CPU seconds of ``root`` (default: this process) and every process
    descending from it; 0.0 where ``/proc`` is missing."""
    root = os.getpid() if root is None else root
    if not Path("/proc").is_dir():
        return 0.0
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields is None:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total

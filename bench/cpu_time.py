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
from collections.abc import Callable
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or no /proc
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name: state, ppid, ...


def uptime_s() -> float:
    """Seconds since boot, the clock of a process's start time in ``/proc`` (0.0 without it)."""
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return 0.0


def _children(pid: int) -> list[int] | None:
    """Direct children of ``pid`` from its threads' ``children`` files (None where the
    kernel has none; [] once ``pid`` is gone)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in threads:
        try:
            out.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return out


def _walk(root: int) -> list[int] | None:
    """``root`` and its descendants through ``children`` files (None where there are none)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        children = _children(pid)
        if children is None:
            return None
        out.append(pid)
        todo.extend(children)
    return out


def tree_cpu_s(root: int | None = None, started_after_s: float = 0.0, reaped: bool = False) -> float:
    """User + system CPU seconds of ``root`` (default: this process) and every process
    descending from it that started at or after ``started_after_s`` (seconds since boot,
    :func:`uptime_s`: a run leaves out what an earlier run left behind, e.g. Ray daemons
    still shutting down, though not the new children of a process kept from an earlier
    run, e.g. the workers a kept fork server forks); 0.0 where ``/proc`` is missing.
    ``reaped``: also the descendants that ended and were waited for by a process of the
    tree (e.g. workers a fork server reaped), which otherwise count only while alive."""
    root = os.getpid() if root is None else root
    last = 14 if reaped else 12  # utime, stime (, cutime, cstime)
    if not Path("/proc").is_dir():
        return 0.0
    tree = _walk(root)  # cheap: only the tree's own entries (a full /proc scan took ~5 ms a stamp)
    if tree is not None:
        total = 0.0
        for pid in tree:
            fields = _stat_fields(str(pid))
            if fields is not None and (pid == root or int(fields[19]) / _TICKS_PER_S >= started_after_s - 1.0 / _TICKS_PER_S):
                total += sum(int(f) for f in fields[11 : last + 1]) / _TICKS_PER_S
        return total
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
        # started before the run (field 22, starttime)? Not counted; its children may be
        # (a fork server kept from an earlier run forks this run's workers)
        if pid == root or int(fields[19]) / _TICKS_PER_S >= started_after_s - 1.0 / _TICKS_PER_S:
            cpu[pid] = sum(int(f) for f in fields[11 : last + 1]) / _TICKS_PER_S  # utime, stime (, cutime, cstime)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def run_cpu_clock() -> Callable[[], float]:
    """A clock of this process's tree CPU seconds that counts only the processes started
    from now on (and this process)."""
    since = uptime_s()
    return lambda: tree_cpu_s(started_after_s=since)


def finished_tree_cpu_s() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children.

    ``getrusage``, not ``/proc``: a bench that runs its work in children it joins (cells in
    worker processes, fedge-sim runs) gets their whole cost once they end, portably.
    """
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

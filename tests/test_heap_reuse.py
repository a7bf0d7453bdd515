"""keep_freed_memory: model-sized buffers freed and made again stop costing fresh pages."""

import subprocess
import sys

import pytest

#: 30 "rounds" of 100 replies' worth of 150 KB buffers, all alive, then all freed (as a
#: round's decoded updates are); prints the page faults of the last 20 rounds.
ROUNDS = """
import resource, sys
import numpy as np
if sys.argv[1] == "tuned":
    from fedge.simulations.heap_reuse import keep_freed_memory
    assert keep_freed_memory()
def one_round():
    buffers = [np.ones(150_000 // 4, dtype=np.float32) for _ in range(100)]
    del buffers
for _ in range(10):
    one_round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux); elsewhere it does nothing")
def test_freed_model_sized_buffers_are_reused_not_refaulted():
    default, tuned = _faults("default"), _faults("tuned")
    pages = 20 * 100 * (150_000 // 4096)  # every buffer's pages, each round
    assert default > pages // 2  # glibc's defaults hand the pages back and fault them in again
    assert tuned < pages // 50  # kept in the heap: the next round reuses them

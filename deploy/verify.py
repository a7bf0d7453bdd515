"""Check an ONNX file in ONNX Runtime: accuracy, agreement with a reference, size, latency.

Latency is per sample: batch-1 inference on one CPU thread (``intra_op_num_threads=1``,
an edge device's budget), the median over ``latency_samples`` test examples after a
warm-up, in milliseconds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedge.deploy.onnx_model import INPUT


@dataclass(frozen=True)
class OnnxCheck:
    """What one ONNX file does on the test split."""

    path: str
    size_bytes: int  # the file on disk
    accuracy: float  # test-split accuracy, [0, 1]
    max_abs_diff: float  # max |logits - reference logits| over the test split
    argmax_agreement: float  # fraction of test examples with the reference's predicted class
    latency_ms: float  # per sample, batch 1, one thread, median
    ops: dict[str, int]  # node count per op type


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on ``path`` with ``threads`` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of the file at ``path`` for examples ``x`` ``(N, *input_shape)``: ``(N, classes)``."""
    sess = session(path)
    return np.concatenate([sess.run(None, {INPUT: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def latency_ms(path: Path, x: np.ndarray, samples: int = 200, warmup: int = 20) -> float:
    """Median batch-1 inference time on one thread, milliseconds per sample."""
    sess = session(path)
    rows = [x[i % len(x)][None] for i in range(samples + warmup)]
    times = []
    for i, row in enumerate(rows):
        start = time.perf_counter()
        sess.run(None, {INPUT: row})
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def check(path: Path, logits: np.ndarray, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
          ops: dict[str, int], latency_samples: int = 200) -> OnnxCheck:
    """Score the file at ``path`` from its ``logits`` on ``(x, y)`` (:func:`run`), compare them with
    ``reference`` ``(N, classes)`` and time it on ``x``."""
    if logits.shape != reference.shape:
        raise ValueError(f"{path}: logits of shape {logits.shape}, the reference has {reference.shape}")
    return OnnxCheck(
        path=str(path),
        size_bytes=path.stat().st_size,
        accuracy=float((logits.argmax(1) == y).mean()),
        max_abs_diff=float(np.abs(logits - reference).max()),
        argmax_agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
        latency_ms=latency_ms(path, x, latency_samples),
        ops=ops,
    )

"""Atomic checkpoints of a federation: one ``checkpoint.npz`` rewritten after every round.

A checkpoint holds the global model, the strategy's state (see
:mod:`fedge.server.strategy_state`), the last finished round, every round's metrics
(fedge's RoundRecords and Flower's Result dictionaries), the refused replies, the
random generators the strategies sample clients with, and a fingerprint of the
experiment's configuration. It is written to a temporary file in the same
directory, flushed to disk and moved over the old one with ``os.replace``, so a
crash at any moment leaves either the previous checkpoint or the new one, never a
torn file. Arrays are stored as numpy arrays and everything else as JSON: loading
never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 1


def fingerprint(config: Any) -> str:
    """SHA-256 of a JSON-able experiment configuration (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Checkpoint:
    """Everything needed to continue a federation after round ``round``."""

    round: int
    model: dict[str, np.ndarray]
    strategy: dict[str, Any]  # strategy_state.capture description
    strategy_arrays: dict[str, np.ndarray]
    records: list[dict[str, Any]]  # RoundRecords as dicts, rounds 0..round
    flower: dict[str, dict[str, dict[str, Any]]]  # Result metric dicts by name, then round
    dropped: list[dict[str, Any]] = field(default_factory=list)
    python_random: Any = None  # random.getstate()
    numpy_random: Any = None  # np.random.get_state()
    config_fingerprint: str = ""

    @staticmethod
    def random_states() -> tuple[Any, Any]:
        return random.getstate(), np.random.get_state()

    def restore_random(self) -> None:
        """Put the process's random generators back where they were after ``round``."""
        if self.python_random is not None:
            version, state, gauss = self.python_random
            random.setstate((version, tuple(state), gauss))
        if self.numpy_random is not None:
            np.random.set_state(self.numpy_random)


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically into ``directory``; returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in checkpoint.model.items()}
    arrays.update({f"strategy/{k}": v for k, v in checkpoint.strategy_arrays.items()})
    numpy_meta = None
    if checkpoint.numpy_random is not None:
        name, keys, pos, has_gauss, cached = checkpoint.numpy_random
        arrays["rng/numpy_keys"] = np.asarray(keys)
        numpy_meta = [name, int(pos), int(has_gauss), float(cached)]
    meta = {
        "format": FORMAT_VERSION,
        "round": checkpoint.round,
        "strategy": checkpoint.strategy,
        "records": checkpoint.records,
        "flower": checkpoint.flower,
        "dropped": checkpoint.dropped,
        "python_random": checkpoint.python_random,
        "numpy_random": numpy_meta,
        "config_fingerprint": checkpoint.config_fingerprint,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read the checkpoint in ``directory``; ``FileNotFoundError``/``ValueError`` say why not."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {meta.get('format')}, this fedge reads {FORMAT_VERSION}")
        model = {k[len("model/") :]: data[k] for k in data.files if k.startswith("model/")}
        strategy_arrays = {k[len("strategy/") :]: data[k] for k in data.files if k.startswith("strategy/")}
        numpy_random = None
        if meta["numpy_random"] is not None:
            name, pos, has_gauss, cached = meta["numpy_random"]
            numpy_random = (name, data["rng/numpy_keys"], pos, has_gauss, cached)
    return Checkpoint(
        round=meta["round"],
        model=model,
        strategy=meta["strategy"],
        strategy_arrays=strategy_arrays,
        records=meta["records"],
        flower=meta["flower"],
        dropped=meta["dropped"],
        python_random=meta["python_random"],
        numpy_random=numpy_random,
        config_fingerprint=meta["config_fingerprint"],
    )

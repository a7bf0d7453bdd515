"""Atomic, verified checkpoints of a federation: the newest ``keep`` rounds, one file each.

A checkpoint (``checkpoint-<round>.npz``) holds the global model, the strategy's state
(see :mod:`fedge.server.strategy_state`), the last finished round, every round's metrics
(fedge's RoundRecords and Flower's Result dictionaries), the wrapper's log of refused,
adjusted and abandoned replies and rounds, the random generators the strategies sample
clients with, what an asynchronous run keeps besides (``extra``: its buffer, model
version and tasks in flight; ``<round>`` then counts saves), and a fingerprint of the
experiment's configuration. It is written to a
temporary file in the same directory, flushed to disk and moved into place with
``os.replace``, so a crash at any moment leaves the previous checkpoints and either
the new one or nothing, never a torn file; then all but the newest ``keep`` are removed.
Arrays are stored as numpy arrays and everything else as JSON: loading never unpickles.

Each file carries a SHA-256 digest of its whole content (the JSON metadata, the round
included, and every array's name, dtype, shape and bytes). :func:`load_checkpoint` picks
the newest checkpoint that is *valid*: readable, digest intact, its round equal to the
one in its file name, a finite model, and the experiment's fingerprint; it says why it
passed over each newer file, and raises :class:`CheckpointError` naming every file's
defect when none is valid. The digest detects corruption and edits (a changed round
number); it is not a signature: whoever may write the checkpoint directory can write a
new checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
#: File name of the checkpoint after round ``r``: ``CHECKPOINT_PATTERN.format(r)``.
CHECKPOINT_PATTERN = "checkpoint-{:06d}.npz"
_NAME = re.compile(r"^checkpoint-(\d{6,})\.npz$")
#: Default number of checkpoints kept (``server.keep_checkpoints``).
DEFAULT_KEEP = 3


class CheckpointError(ValueError):
    """No usable checkpoint; the message says what is wrong with each file."""


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
    log: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # CompressionLog.to_dict()
    python_random: Any = None  # random.getstate()
    numpy_random: Any = None  # np.random.get_state()
    config_fingerprint: str = ""
    # What a driver other than Flower's round loop keeps (the asynchronous driver: its
    # buffer, model version, dispatches in flight; :mod:`fedge.server.async_grpc_checkpoint`):
    # JSON, and arrays stored like the model's. Empty for synchronous runs.
    extra: dict[str, Any] = field(default_factory=dict)
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)

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


def checkpoint_files(directory: str | Path) -> list[tuple[int, Path]]:
    """``(round, path)`` of every checkpoint file in ``directory``, newest round first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def _digest(meta: bytes, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    h.update(len(meta).to_bytes(8, "little") + meta)
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, value.dtype.str, list(value.shape)]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        h.update(value.tobytes())
    return h.hexdigest()


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint, keep: int = DEFAULT_KEEP) -> Path:
    """Write ``checkpoint`` atomically into ``directory``, keep the newest ``keep``; returns the file.

    An ``OSError`` (a full disk, ...) leaves the earlier checkpoints as they were.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_PATTERN.format(checkpoint.round)
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in checkpoint.model.items()}
    arrays.update({f"strategy/{k}": v for k, v in checkpoint.strategy_arrays.items()})
    arrays.update({f"extra/{k}": v for k, v in checkpoint.extra_arrays.items()})
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
        "log": checkpoint.log,
        "python_random": checkpoint.python_random,
        "numpy_random": numpy_meta,
        "config_fingerprint": checkpoint.config_fingerprint,
        "extra": checkpoint.extra,
    }
    meta_bytes = json.dumps(meta).encode()
    arrays["meta"] = np.frombuffer(meta_bytes, dtype=np.uint8)
    arrays["digest"] = np.frombuffer(_digest(meta_bytes, arrays).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
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
    for _, old in checkpoint_files(directory)[keep:]:
        old.unlink(missing_ok=True)
    return target


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify one checkpoint file; :class:`CheckpointError` says what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - zip, npy and OS errors all mean "unreadable"
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if "meta" not in contents or "digest" not in contents:
        raise CheckpointError(f"{path}: not a fedge checkpoint of format {FORMAT_VERSION} (no metadata or digest)")
    stored = bytes(contents.pop("digest")).decode(errors="replace")
    meta_bytes = bytes(contents["meta"])
    if _digest(meta_bytes, contents) != stored:
        raise CheckpointError(f"{path}: content does not match its digest (corrupted or edited)")
    try:
        meta = json.loads(meta_bytes.decode())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {meta.get('format')}, this fedge reads {FORMAT_VERSION}")
        model = {k[len("model/") :]: v for k, v in contents.items() if k.startswith("model/")}
        strategy_arrays = {k[len("strategy/") :]: v for k, v in contents.items() if k.startswith("strategy/")}
        extra_arrays = {k[len("extra/") :]: v for k, v in contents.items() if k.startswith("extra/")}
        numpy_random = None
        if meta["numpy_random"] is not None:
            name, pos, has_gauss, cached = meta["numpy_random"]
            numpy_random = (name, contents["rng/numpy_keys"], pos, has_gauss, cached)
        checkpoint = Checkpoint(
            round=int(meta["round"]),
            model=model,
            strategy=meta["strategy"],
            strategy_arrays=strategy_arrays,
            records=meta["records"],
            flower=meta["flower"],
            log=meta["log"],
            python_random=meta["python_random"],
            numpy_random=numpy_random,
            config_fingerprint=meta["config_fingerprint"],
            extra=meta.get("extra", {}),
            extra_arrays=extra_arrays,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed metadata ({type(exc).__name__}: {exc})") from None
    match = _NAME.match(path.name)
    if match is not None and int(match.group(1)) != checkpoint.round:
        raise CheckpointError(f"{path}: holds round {checkpoint.round}, its name says round {int(match.group(1))}")
    bad = [k for k, v in model.items() if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all()]
    if not model or bad:
        raise CheckpointError(f"{path}: the model is {'empty' if not model else f'not finite in {bad[:3]}'}")
    return checkpoint


def load_checkpoint(directory: str | Path, config_fingerprint: str | None = None) -> Checkpoint:
    """The newest valid checkpoint in ``directory`` (of the experiment ``config_fingerprint``, if given).

    Raises ``FileNotFoundError`` when there is none at all and :class:`CheckpointError`,
    naming each file's defect, when none is valid.
    """
    files = checkpoint_files(directory)
    if not files:
        raise FileNotFoundError(f"no checkpoint to resume from: {Path(directory)} holds no checkpoint-*.npz")
    reasons: list[str] = []
    for _, path in files:
        try:
            checkpoint = read_checkpoint(path)
            if config_fingerprint is not None and checkpoint.config_fingerprint != config_fingerprint:
                raise CheckpointError(
                    f"{path}: belongs to a different experiment configuration; resume with the configuration "
                    "it was written with, or use another server.checkpoint_dir"
                )
        except CheckpointError as exc:
            reasons.append(str(exc))
            continue
        for reason in reasons:
            log.warning("passed over a newer checkpoint: %s", reason)
        return checkpoint
    raise CheckpointError("no valid checkpoint to resume from:\n  " + "\n  ".join(reasons))

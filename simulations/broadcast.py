"""One copy of a round's model for all of a machine's worker processes: shared memory.

Every client of a round is sent the same model (the strategy encodes it once per round:
one payload object, or two with downlink deltas). Serialising a full Task per client
would copy that model once per client in the server and again through each worker's
pipe. Instead :class:`SplitTask` keeps a task as its header (every field but the model,
serialised, a few hundred bytes) and a reference to the shared model payload;
:class:`BroadcastBoard` writes each distinct payload of a delivery once into a
:mod:`multiprocessing.shared_memory` segment, so a worker receives only headers and
``(offset, length)`` slots through its pipe and reads the model from the segment, once
per job (:class:`BroadcastReader`).

Byte counts stay real: ``len(SplitTask)`` is the exact size of the serialised Task (the
header, then field 5's tag, its length varint and the payload: a valid Task encoding
with the same fields, so the same size), computed without building it.

Written by hand: ``multiprocessing.shared_memory`` provides the segment; no library
splits a protobuf message around a shared field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import shared_memory

from fedge.protos.v1 import task_pb2, tensor_pb2

#: Tag byte of ``Task.model`` on the wire: field 5, wire type 2 (length-delimited).
MODEL_TAG = bytes([(5 << 3) | 2])


def varint_size(value: int) -> int:
    """Bytes of ``value`` (>= 0) as a protobuf varint."""
    return max(1, -(-value.bit_length() // 7))


@dataclass(frozen=True)
class SplitTask:
    """A Task as its serialised header (all fields but ``model``) and its model payload
    (a serialised CompressedUpdate, the object shared by every task of a broadcast)."""

    header: bytes
    model: bytes

    def __len__(self) -> int:
        """Size in bytes of the serialised Task."""
        return len(self.header) + len(MODEL_TAG) + varint_size(len(self.model)) + len(self.model)

    def task(self) -> task_pb2.Task:
        """The Task proto (parses the model)."""
        return assemble(self.header, tensor_pb2.CompressedUpdate.FromString(self.model))

    def serialised(self) -> bytes:
        """The Task's wire bytes (what a device would receive; copies the model)."""
        return b"".join((self.header, MODEL_TAG, _varint(len(self.model)), self.model))


def assemble(header: bytes, model: tensor_pb2.CompressedUpdate) -> task_pb2.Task:
    """The Task of ``header`` carrying ``model`` (copied into it)."""
    task = task_pb2.Task.FromString(header)
    task.model.CopyFrom(model)
    return task


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


#: One task of a worker's job: ``(node_id, header bytes, slot)``; slot ``i`` is the
#: ``i``-th ``(offset, length)`` of the job's segment.
JobTask = tuple[int, bytes, int]


@dataclass(frozen=True)
class Job:
    """What a worker is sent for one delivery: its tasks and where their models are."""

    segment: str  # shared-memory segment name
    slots: tuple[tuple[int, int], ...]  # (offset, length) of each distinct model payload
    tasks: tuple[JobTask, ...]


def distinct_payloads(tasks: Sequence[tuple[int, SplitTask]]) -> tuple[list[bytes], list[int]]:
    """The distinct model payloads of ``tasks`` (told apart by identity: a broadcast is
    one object) and, per task, the index of its payload."""
    slot_of: dict[int, int] = {}
    payloads: list[bytes] = []
    task_slots = []
    for _, split in tasks:
        key = id(split.model)
        if key not in slot_of:
            slot_of[key] = len(payloads)
            payloads.append(split.model)
        task_slots.append(slot_of[key])
    return payloads, task_slots


class BroadcastBoard:
    """The server side: one shared-memory segment, grown when a delivery needs more,
    holding the distinct model payloads of the delivery in flight."""

    def __init__(self) -> None:
        self._segment: shared_memory.SharedMemory | None = None

    def post(self, tasks: Sequence[tuple[int, SplitTask]]) -> tuple[str, tuple[tuple[int, int], ...], list[int]]:
        """Write each distinct payload of ``tasks`` once; ``(segment name, slots, slot of
        each task)``."""
        payloads, task_slots = distinct_payloads(tasks)
        total = sum(len(p) for p in payloads)
        segment = self._room(max(total, 1))
        buf = segment.buf
        assert buf is not None  # an open segment has its buffer
        slots, offset = [], 0
        for payload in payloads:
            buf[offset : offset + len(payload)] = payload
            slots.append((offset, len(payload)))
            offset += len(payload)
        return segment.name, tuple(slots), task_slots

    def _room(self, size: int) -> shared_memory.SharedMemory:
        if self._segment is None or self._segment.size < size:
            self.close()
            self._segment = shared_memory.SharedMemory(create=True, size=size + size // 4)
        return self._segment

    def close(self) -> None:
        """Release the segment (workers that still map it keep their mapping)."""
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
            self._segment = None


class BroadcastReader:
    """The worker side: maps the server's current segment and parses a job's models."""

    def __init__(self) -> None:
        self._segment: shared_memory.SharedMemory | None = None

    def models(self, job: Job) -> list[tensor_pb2.CompressedUpdate]:
        """The job's model payloads, parsed once each."""
        if self._segment is None or self._segment.name != job.segment:
            self.close()
            # Workers are the server's spawned children: they share its resource tracker,
            # so mapping the segment here neither leaks it nor unlinks it at exit.
            self._segment = shared_memory.SharedMemory(name=job.segment)
        buf = self._segment.buf
        assert buf is not None  # an open segment has its buffer
        return [tensor_pb2.CompressedUpdate.FromString(buf[offset : offset + length]) for offset, length in job.slots]

    def close(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None


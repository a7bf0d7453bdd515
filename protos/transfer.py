"""Payloads larger than one gRPC message: cut into ``Chunk`` messages and joined back.

A transfer is one ``TransferHeader`` chunk (task id, total size, SHA-256, signature)
followed by the payload's bytes in ``data`` chunks of at most ``chunk_bytes`` each.
:class:`Reassembler` checks sizes as bytes arrive (a peer cannot make it buffer more
than the header announced, nor more than its own limit) and the digest at the end.

Written by hand because gRPC has no built-in message fragmentation: its answer to a
large payload is "stream it", and this is that stream's framing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fedge.protos.v1 import federation_pb2 as fpb

#: Default data bytes per chunk (1 MiB): well under gRPC's 4 MiB message limit.
DEFAULT_CHUNK_BYTES = 1 << 20
#: gRPC frames every message with a 1-byte flag and a 4-byte length.
GRPC_MESSAGE_PREFIX_BYTES = 5


class TransferError(ValueError):
    """A transfer that cannot be accepted; the message says what is wrong."""


def digest(payload: bytes) -> bytes:
    """SHA-256 of a payload (32 bytes)."""
    return hashlib.sha256(payload).digest()


def chunks(
    payload: bytes,
    task_id: str,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    signature: bytes = b"",
    status: fpb.PullStatus = fpb.PULL_STATUS_UNSPECIFIED,
    sha256: bytes | None = None,
) -> Iterator[fpb.Chunk]:
    """The messages of one transfer: a header, then ``payload`` in order."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    header = fpb.TransferHeader(
        task_id=task_id,
        total_bytes=len(payload),
        sha256=digest(payload) if sha256 is None else sha256,
        signature=signature,
        status=status,
    )
    yield fpb.Chunk(header=header)
    view = memoryview(payload)
    for start in range(0, len(payload), chunk_bytes):
        yield fpb.Chunk(data=bytes(view[start : start + chunk_bytes]))


def wire_bytes(messages: Iterable[fpb.Chunk]) -> int:
    """Bytes these messages take as gRPC messages (serialised size + 5-byte prefix each)."""
    return sum(m.ByteSize() + GRPC_MESSAGE_PREFIX_BYTES for m in messages)


@dataclass
class Received:
    """A completed transfer."""

    header: fpb.TransferHeader
    payload: bytes


class Reassembler:
    """Joins the chunks of one transfer, refusing anything inconsistent or too large.

    Parameters
    ----------
    max_bytes:
        Largest payload this side accepts, in bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.header: fpb.TransferHeader | None = None
        self._buffer = bytearray()

    def add(self, chunk: fpb.Chunk) -> None:
        """Take the next message of the transfer."""
        part = chunk.WhichOneof("part")
        if part == "header":
            if self.header is not None:
                raise TransferError("a second header arrived within one transfer")
            if chunk.header.total_bytes > self.max_bytes:
                raise TransferError(
                    f"payload of {chunk.header.total_bytes} bytes exceeds the limit of {self.max_bytes}"
                )
            self.header = chunk.header
        elif part == "data":
            if self.header is None:
                raise TransferError("data arrived before the transfer header")
            if len(self._buffer) + len(chunk.data) > self.header.total_bytes:
                raise TransferError(
                    f"more data than the {self.header.total_bytes} bytes the header announced"
                )
            self._buffer += chunk.data
        else:
            raise TransferError("empty chunk (neither header nor data)")

    def finish(self) -> Received:
        """The payload, once complete and matching its digest."""
        if self.header is None:
            raise TransferError("the transfer ended before its header")
        if len(self._buffer) != self.header.total_bytes:
            raise TransferError(
                f"transfer ended after {len(self._buffer)} of {self.header.total_bytes} bytes"
            )
        payload = bytes(self._buffer)
        if digest(payload) != self.header.sha256:
            raise TransferError("payload does not match its SHA-256 digest")
        return Received(self.header, payload)


def reassemble(messages: Iterable[fpb.Chunk], max_bytes: int) -> Received:
    """Join a whole transfer from an iterable of chunks."""
    joiner = Reassembler(max_bytes)
    for message in messages:
        joiner.add(message)
    return joiner.finish()

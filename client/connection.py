"""The device's side of the Federation service: one channel, the five calls.

Calls exchange raw bytes with gRPC (identity serialisers) so the device can count
the exact message bytes it received and sent. TLS: the device presents its own
certificate and trusts only the federation's CA. Needs grpcio and protobuf only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from fedge.protos import PROTOCOL_VERSION
from fedge.protos.transfer import GRPC_MESSAGE_PREFIX_BYTES, Reassembler, TransferError, chunks
from fedge.protos.v1 import federation_pb2 as fpb

SERVICE = "/fedge.v1.Federation/"
DEVICE_ID_METADATA = "fedge-device-id"
LOOPBACK_HOSTS = ("localhost",)


def is_loopback(address: str) -> bool:
    """Is ``HOST:PORT`` a loopback address? (Plaintext is allowed only there, both sides.)"""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DeviceCredentials:
    """The device's TLS material: the federation's CA, its certificate and key (PEM)."""

    ca: bytes
    certificate: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, ca: str | Path, cert: str | Path, key: str | Path) -> DeviceCredentials:
        paths = {"--ca": Path(ca), "--cert": Path(cert), "--key": Path(key)}
        missing = [f"{flag} {p}" for flag, p in paths.items() if not p.is_file()]
        if missing:
            raise ValueError(f"missing TLS files: {', '.join(missing)}")
        return cls(*(p.read_bytes() for p in paths.values()))


@dataclass
class Pulled:
    """What one PullTask returned."""

    header: fpb.TransferHeader
    payload: bytes | None  # the serialised Task (status TASK only, and only when it arrived intact)
    wire_bytes: int  # gRPC message bytes received
    broken: str = ""  # why a Task that arrived cannot be used (digest mismatch, size, framing)


def _identity(raw: bytes) -> bytes:
    return raw


class Connection:
    """A channel to the server with typed calls.

    Parameters
    ----------
    target:
        ``host:port`` of the server.
    device_id:
        Sent as metadata (the server uses it only on insecure channels).
    credentials:
        TLS material; ``None`` for a plaintext (development) channel.
    server_name:
        Name to check the server certificate against, if not the target's host.
    """

    def __init__(
        self,
        target: str,
        device_id: str,
        credentials: DeviceCredentials | None,
        server_name: str | None = None,
    ) -> None:
        options: list[tuple[str, object]] = []
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(credentials.ca, credentials.private_key, credentials.certificate)
            self.channel = grpc.secure_channel(target, creds, options=options)
        self.metadata = ((DEVICE_ID_METADATA, device_id),)
        raw = {"request_serializer": _identity, "response_deserializer": _identity}
        self._join = self.channel.unary_unary(SERVICE + "Join", **raw)
        self._pull = self.channel.unary_stream(SERVICE + "PullTask", **raw)
        self._push = self.channel.stream_unary(SERVICE + "PushUpdate", **raw)
        self._heartbeat = self.channel.unary_unary(SERVICE + "Heartbeat", **raw)
        self._leave = self.channel.unary_unary(SERVICE + "Leave", **raw)
        self._current_pull: grpc.Call | None = None

    def join(
        self, device_id: str, profile: Mapping[str, float], codecs: Sequence[str], timeout_s: float
    ) -> fpb.JoinReply:
        request = fpb.JoinRequest(
            device_id=device_id, profile=dict(profile), codecs=list(codecs), protocol_version=PROTOCOL_VERSION
        )
        raw = self._join(request.SerializeToString(), timeout=timeout_s, metadata=self.metadata, wait_for_ready=False)
        return fpb.JoinReply.FromString(raw)

    def pull(self, wait_s: float, max_task_bytes: int, transfer_timeout_s: float) -> Pulled:
        """One long poll; the Task's bytes are joined and checked against their digest."""
        call = self._pull(
            fpb.PullRequest(wait_s=wait_s).SerializeToString(),
            timeout=wait_s + transfer_timeout_s,
            metadata=self.metadata,
        )
        self._current_pull = call
        joiner = Reassembler(max_task_bytes)
        wire = 0
        try:
            for data in call:
                wire += len(data) + GRPC_MESSAGE_PREFIX_BYTES
                joiner.add(fpb.Chunk.FromString(data))
                if joiner.header is not None and joiner.header.status != fpb.PULL_STATUS_TASK:
                    return Pulled(joiner.header, None, wire)
            received = joiner.finish()
            return Pulled(received.header, received.payload, wire)
        except (TransferError, DecodeError) as exc:
            if joiner.header is None or not joiner.header.task_id:
                raise TransferError(f"the server sent a transfer without a task header: {exc}") from None
            call.cancel()
            return Pulled(joiner.header, None, wire, broken=f"bad task transfer: {exc}")
        finally:
            self._current_pull = None

    @property
    def pulling(self) -> bool:
        """Is a long poll open now? (It shows the server the device is there.)"""
        return self._current_pull is not None

    def push(self, task_id: str, update: bytes, chunk_bytes: int, timeout_s: float) -> tuple[fpb.PushReply, int]:
        """Send an Update's bytes in chunks; returns the reply and the gRPC bytes sent."""
        sent = [0]

        def messages() -> Iterator[bytes]:
            for message in chunks(update, task_id, chunk_bytes):
                data = message.SerializeToString()
                sent[0] += len(data) + GRPC_MESSAGE_PREFIX_BYTES
                yield data

        raw = self._push(messages(), timeout=timeout_s, metadata=self.metadata)
        return fpb.PushReply.FromString(raw), sent[0]

    def heartbeat(self, task_id: str, timeout_s: float) -> fpb.HeartbeatReply:
        raw = self._heartbeat(
            fpb.HeartbeatRequest(task_id=task_id).SerializeToString(), timeout=timeout_s, metadata=self.metadata
        )
        return fpb.HeartbeatReply.FromString(raw)

    def leave(self, reason: str, timeout_s: float) -> None:
        self._leave(fpb.LeaveRequest(reason=reason).SerializeToString(), timeout=timeout_s, metadata=self.metadata)

    def cancel_pull(self) -> None:
        """Abort a long poll in progress (used on shutdown)."""
        call = self._current_pull
        if call is not None:
            call.cancel()

    def close(self) -> None:
        self.channel.close()

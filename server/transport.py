"""The gRPC Federation server: servicer, mTLS, health service, byte counting.

:class:`FederationServer` serves ``fedge.v1.Federation`` (and the standard
``grpc.health.v1.Health``) on a thread pool. With credentials (the default) it
requires a client certificate issued by the federation's CA, takes each device's
identity from that certificate's common name and signs every Task it sends with its
Ed25519 key; ``insecure`` serves plaintext on loopback only, for development.

The handlers exchange raw bytes with gRPC (identity serialisers) and parse them
here, so the byte counts are exactly the message bytes gRPC carried, plus gRPC's
5-byte message prefix.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedge.protos import PROTOCOL_VERSION
from fedge.protos.signing import load_private_key, sign_task
from fedge.protos.transfer import GRPC_MESSAGE_PREFIX_BYTES, Reassembler, TransferError, chunks, digest
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.protos.v1 import task_pb2
from fedge.server.certs import CertDir
from fedge.conf.schema import ServerConfig
from fedge.server.registry import NodeRegistry
from fedge.server.taskboard import FINISHED, AnswerStatus, Outgoing, TaskBoard

log = logging.getLogger(__name__)

SERVICE = "fedge.v1.Federation"
#: Metadata key naming the device on an insecure channel (ignored under mTLS).
DEVICE_ID_METADATA = "fedge-device-id"
LOOPBACK_HOSTS = ("localhost",)


@dataclass(frozen=True)
class ServerCredentials:
    """TLS material and the model-signing key, as ``fedge-certs`` wrote them."""

    ca: bytes
    certificate: bytes
    private_key: bytes
    signing_certificate: bytes
    signing_key: bytes

    @classmethod
    def from_dir(cls, root: str | Path) -> ServerCredentials:
        paths = CertDir(Path(root))
        files = [paths.ca, paths.server, paths.server_key, paths.signing, paths.signing_key]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise ValueError(
                f"certificate files missing: {', '.join(missing)} (create them with `fedge-certs {root}`, "
                "or run with --insecure on loopback for development)"
            )
        return cls(*(p.read_bytes() for p in files))


def is_loopback(address: str) -> bool:
    """Is ``HOST:PORT`` a loopback address?"""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _identity(raw: bytes) -> bytes:
    return raw


class FederationServicer:
    """The five RPCs, over a node registry and a task board."""

    def __init__(
        self,
        registry: NodeRegistry,
        board: TaskBoard,
        settings: ServerConfig,
        *,
        secure: bool,
        signing_certificate: bytes = b"",
        required_codecs: Sequence[str] = (),
        max_update_bytes: int = 1 << 30,
    ) -> None:
        self.registry = registry
        self.board = board
        self.settings = settings
        self.secure = secure
        self.signing_certificate = signing_certificate
        self.required_codecs = sorted(set(required_codecs))
        self.max_update_bytes = max_update_bytes

    # -- identity -----------------------------------------------------------------
    def _device(self, context: grpc.ServicerContext, claimed: str = "") -> str:
        if self.secure:
            names = context.auth_context().get("x509_common_name")
            if not names:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
            return names[0].decode()
        device = dict(context.invocation_metadata()).get(DEVICE_ID_METADATA) or claimed
        if not device:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"no device id (metadata {DEVICE_ID_METADATA!r})")
        return device

    def _joined(self, context: grpc.ServicerContext) -> tuple[str, int]:
        device = self._device(context)
        node = self.registry.touch(device)
        if node is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {device!r} has not joined (or the server restarted): join again",
            )
        return device, node.node_id

    # -- RPCs ---------------------------------------------------------------------
    def join(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        request = fpb.JoinRequest.FromString(raw)
        device = self._device(context, request.device_id)
        if request.protocol_version != PROTOCOL_VERSION:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device speaks fedge protocol {request.protocol_version}, the server {PROTOCOL_VERSION}",
            )
        missing = [c for c in self.required_codecs if c not in request.codecs]
        if missing:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {device!r} lacks codecs {missing} that this federation uses",
            )
        try:
            node = self.registry.join(device, dict(request.profile), list(request.codecs))
        except ValueError as exc:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        log.info("device %s joined as node %d (join #%d)", device, node.node_id, node.joins)
        return fpb.JoinReply(
            node_id=node.node_id,
            protocol_version=PROTOCOL_VERSION,
            heartbeat_interval_s=self.settings.heartbeat_s,
            signing_certificate=self.signing_certificate,
            max_chunk_bytes=self.settings.chunk_bytes,
        ).SerializeToString()

    def pull_task(self, raw: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        request = fpb.PullRequest.FromString(raw)
        device, node_id = self._joined(context)
        wait_s = min(request.wait_s, self.settings.pull_wait_s) if request.wait_s > 0 else self.settings.pull_wait_s
        got = self.board.take(
            node_id,
            wait_s,
            keep_waiting=context.is_active,
            tick_s=min(1.0, self.settings.heartbeat_s),
            on_tick=lambda: self.registry.touch(device),
        )
        if got is FINISHED or got is None:
            status = fpb.PULL_STATUS_FINISHED if got is FINISHED else fpb.PULL_STATUS_NO_TASK
            yield fpb.Chunk(header=fpb.TransferHeader(status=status)).SerializeToString()
            return
        assert isinstance(got, Outgoing)
        sent = 0
        try:
            for message in chunks(
                got.payload, got.task_id, self.settings.chunk_bytes,
                signature=got.signature, status=fpb.PULL_STATUS_TASK, sha256=got.sha256,
            ):
                data = message.SerializeToString()
                sent += len(data) + GRPC_MESSAGE_PREFIX_BYTES
                yield data
        finally:
            self.board.add_downlink(got, sent)
            self.registry.touch(device)

    def push_update(self, raw_chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        device, node_id = self._joined(context)
        joiner = Reassembler(self.max_update_bytes)
        wire = 0
        try:
            for data in raw_chunks:
                wire += len(data) + GRPC_MESSAGE_PREFIX_BYTES
                joiner.add(fpb.Chunk.FromString(data))
            received = joiner.finish()
            update = task_pb2.Update.FromString(received.payload)
        except (TransferError, DecodeError) as exc:
            return self._refuse(device, f"bad transfer: {exc}")
        if update.task_id != received.header.task_id:
            return self._refuse(device, f"update answers {update.task_id!r}, the transfer says {received.header.task_id!r}")
        status = self.board.answer(node_id, update.task_id, received.payload, wire)
        self.registry.touch(device)
        if status in (AnswerStatus.ACCEPTED, AnswerStatus.DUPLICATE):
            return fpb.PushReply(accepted=True, duplicate=status is AnswerStatus.DUPLICATE).SerializeToString()
        return self._refuse(device, f"task {update.task_id!r}: {status.value}")

    def heartbeat(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        fpb.HeartbeatRequest.FromString(raw)
        known = self.registry.touch(self._device(context)) is not None
        return fpb.HeartbeatReply(known=known).SerializeToString()

    def leave(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        request = fpb.LeaveRequest.FromString(raw)
        device = self._device(context)
        self.registry.leave(device)
        log.info("device %s left: %s", device, request.reason or "no reason given")
        return fpb.LeaveReply().SerializeToString()

    @staticmethod
    def _refuse(device: str, reason: str) -> bytes:
        log.warning("update from device %s refused: %s", device, reason)
        return fpb.PushReply(accepted=False, reason=reason).SerializeToString()

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, exchanging raw bytes with gRPC."""
        raw = {"request_deserializer": _identity, "response_serializer": _identity}
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Join": grpc.unary_unary_rpc_method_handler(self.join, **raw),
                "PullTask": grpc.unary_stream_rpc_method_handler(self.pull_task, **raw),
                "PushUpdate": grpc.stream_unary_rpc_method_handler(self.push_update, **raw),
                "Heartbeat": grpc.unary_unary_rpc_method_handler(self.heartbeat, **raw),
                "Leave": grpc.unary_unary_rpc_method_handler(self.leave, **raw),
            },
        )


class FederationServer:
    """A running Federation gRPC server (start/stop), its registry and task board.

    Parameters
    ----------
    settings:
        The ``server.*`` settings (address, deadlines, chunk size, threads).
    credentials:
        TLS material and signing key; ``None`` serves plaintext (loopback only).
    required_codecs:
        Codec ids a device must support to join (the federation's uplink/downlink).
    max_update_bytes:
        Largest Update a device may push.
    """

    def __init__(
        self,
        settings: ServerConfig,
        credentials: ServerCredentials | None,
        required_codecs: Sequence[str] = (),
        max_update_bytes: int = 1 << 30,
    ) -> None:
        settings.check()
        if credentials is None and not is_loopback(settings.address):
            raise ValueError(
                f"insecure mode serves loopback addresses only, not {settings.address!r}: "
                "create certificates with fedge-certs for anything else"
            )
        self.settings = settings
        self.registry = NodeRegistry(settings.liveness_s)
        self.board = TaskBoard()
        self._signing_key = load_private_key(credentials.signing_key) if credentials else None
        self.servicer = FederationServicer(
            self.registry,
            self.board,
            settings,
            secure=credentials is not None,
            signing_certificate=credentials.signing_certificate if credentials else b"",
            required_codecs=required_codecs,
            max_update_bytes=max_update_bytes,
        )
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="fedge-grpc"),
            handlers=[self.servicer.handler()],
            maximum_concurrent_rpcs=settings.max_workers,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if credentials is None:
            log.warning(
                "fedge-server is running INSECURE on %s: no TLS, devices are not authenticated and "
                "tasks are not signed. Use this for loopback development only.",
                settings.address,
            )
            self.port = self._server.add_insecure_port(settings.address)
        else:
            creds = grpc.ssl_server_credentials(
                [(credentials.private_key, credentials.certificate)],
                root_certificates=credentials.ca,
                require_client_auth=True,
            )
            self.port = self._server.add_secure_port(settings.address, creds)
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.address}")
        self.secure = credentials is not None

    @property
    def address(self) -> str:
        """``host:port`` devices connect to (the bound port when 0 was asked for)."""
        host = self.settings.address.rsplit(":", 1)[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}"

    def outgoing(self, node_id: int, server_round: int, task_id: str, payload: bytes) -> Outgoing:
        """A Task ready to post: its digest and (when secure) its signature."""
        sha256 = digest(payload)
        signature = sign_task(self._signing_key, sha256) if self._signing_key is not None else b""
        return Outgoing(task_id, node_id, server_round, payload, sha256, signature)

    def start(self) -> FederationServer:
        self._server.start()
        for service in ("", SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving. Devices are not told the federation is over (``board.finish``
        does that): to them this looks like a crash, and they reconnect."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace_s).wait()

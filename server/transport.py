"""The gRPC Federation server (``grpc.aio``): servicer, mTLS, health, limits, byte counting.

:class:`FederationServer` serves ``fedge.v1.Federation`` (and the standard
``grpc.health.v1.Health``) from an asyncio gRPC server on its own event-loop thread,
so a device waiting in a long poll costs a coroutine, not a thread. The round driver
(a Flower strategy, synchronous, in the main thread) meets it only through the
thread-safe :class:`~fedge.server.taskboard.TaskBoard` and
:class:`~fedge.server.registry.NodeRegistry`; :meth:`FederationServer.start` and
:meth:`FederationServer.stop` hand their work to the loop with
``asyncio.run_coroutine_threadsafe``. CPU work on large payloads (digests, parsing)
runs in a small thread pool (``server.max_workers``) so it never stalls the loop.

With credentials (the default) it requires a client certificate issued by the
federation's CA, checks it itself (:func:`fedge.server.certs.client_identity`: client
usage, one plain common name) and takes the device's identity from it; every Task it
sends is signed with its Ed25519 key. ``insecure`` serves plaintext on loopback only.

Device input is hostile; every limit is per device or per stream:

* at most ``server.max_streams_per_connection`` RPCs at once per connection (HTTP/2's
  own limit: the rest wait on the device's side, costing the server nothing);
* one session per device (:class:`~fedge.server.registry.SessionTaken`), one push in
  flight, at most ``server.max_polls_per_device`` long polls; a call over these limits
  is refused only after ``server.refusal_delay_s``, so a flood slows itself down;
* every push and pull stream has an idle deadline (``server.stream_idle_s``) and a total
  one (``server.stream_total_s``);
* a push is checked at its first chunk: the task must be open for this device and the
  announced size within the task's limit (:mod:`fedge.server.push_limits`), so nothing
  is buffered for a push the server would refuse;
* every refusal is a gRPC status code with a reason in its details (or a ``PushReply``
  reason for task outcomes: expired, unknown, wrong node), logged as one line,
  rate-limited per kind (``server.error_log_interval_s``); never a traceback.

The handlers exchange raw bytes with gRPC (identity serialisers) and parse them here,
so the byte counts are exactly the message bytes gRPC carried, plus gRPC's 5-byte
message prefix.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedge.client.connection import DEVICE_ID_METADATA, is_loopback
from fedge.protos import PROTOCOL_VERSION
from fedge.protos.signing import load_private_key, sign_task
from fedge.protos.transfer import GRPC_MESSAGE_PREFIX_BYTES, Reassembler, TransferError, chunks, digest
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.protos.v1 import task_pb2
from fedge.conf.schema import ServerConfig
from fedge.server.certs import CertDir, CertificateRefused, check_device_id, client_identity
from fedge.server.push_limits import UpdateCeiling
from fedge.server.registry import NodeRegistry, SessionTaken
from fedge.server.taskboard import FINISHED, AnswerStatus, Outgoing, TaskBoard

log = logging.getLogger(__name__)

SERVICE = "fedge.v1.Federation"
#: Most profile entries and codec names a JoinRequest may carry.
MAX_JOIN_ENTRIES = 64
#: Client certificates whose check is remembered (PEM -> identity or refusal).
CERT_CACHE_SIZE = 65536

M = TypeVar("M", bound=Message)


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


def check_insecure(address: str) -> None:
    """``ValueError`` unless plaintext may be served on ``address`` (loopback only)."""
    if not is_loopback(address):
        raise ValueError(
            f"insecure mode (--insecure, server.insecure) serves loopback addresses only, not {address!r}: "
            "set server.address=127.0.0.1:PORT, or create certificates with fedge-certs for anything else"
        )


def _identity(raw: bytes) -> bytes:
    return raw


class Refused(Exception):
    """A request the server refuses: a gRPC status code and the reason (its details).

    ``flood``: refused for exceeding a per-device limit; the answer is held back by
    ``server.refusal_delay_s`` so a flooding device slows itself down.
    """

    def __init__(self, code: grpc.StatusCode, reason: str, *, flood: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.flood = flood


class RateLimitedLog:
    """One log line per kind of complaint per ``interval_s``; the rest are counted."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, kind: str, message: str) -> None:
        now = self._clock()
        if now - self._last.get(kind, -math.inf) < self.interval_s:
            self._suppressed[kind] += 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("%s%s", message, f" ({more} more like it since the last line)" if more else "")


def _guarded(rpc: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Coroutine[Any, Any, Any]]]:
    """Turn :class:`Refused` and any unexpected error of an RPC handler into a status code
    with a reason and one rate-limited log line (never a traceback per call)."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
        @functools.wraps(handler)
        async def guarded(self: FederationServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await handler(self, request, context)
            except Refused as exc:
                self.refusals[exc.code.name] += 1
                self.complaints.warning(f"{rpc}:{exc.code.name}", f"{rpc} from {context.peer()} refused ({exc.code.name}): {exc.reason}")
                if exc.flood:
                    await asyncio.sleep(self.settings.refusal_delay_s)
                await context.abort(exc.code, exc.reason)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a hostile device must not make the server print tracebacks
                self.refusals["INTERNAL"] += 1
                self.complaints.warning(f"{rpc}:INTERNAL", f"{rpc} from {context.peer()} failed: {type(exc).__name__}: {exc}")
                await context.abort(grpc.StatusCode.INTERNAL, f"{rpc} failed on the server: {type(exc).__name__}")

        return guarded

    return wrap


def _parse(kind: type[M], raw: bytes, rpc: str) -> M:
    try:
        return kind.FromString(raw)
    except DecodeError as exc:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{rpc} request does not parse as {kind.__name__}: {exc}") from None


class FederationServicer:
    """The five RPCs (coroutines on the server's event loop), over a registry and a task board."""

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
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.registry = registry
        self.board = board
        self.settings = settings
        self.secure = secure
        self.signing_certificate = signing_certificate
        self.required_codecs = sorted(set(required_codecs))
        self.max_update_bytes = max_update_bytes
        self.pool = pool
        self.complaints = RateLimitedLog(settings.error_log_interval_s)
        self.refusals: Counter[str] = Counter()  # status code name -> refused calls
        self.buffered_bytes = 0  # push payload bytes held in memory right now
        self.buffered_peak_bytes = 0  # most ever held at once
        self._certificates: OrderedDict[bytes, str | CertificateRefused] = OrderedDict()
        self._polls: dict[str, deque[asyncio.Future[None]]] = {}  # device -> its open long polls, oldest first
        self._pushing: set[str] = set()  # devices with a push in flight

    # -- identity -----------------------------------------------------------------
    def _device(self, context: grpc.aio.ServicerContext, claimed: str = "") -> str:
        if self.secure:
            pems = context.auth_context().get("x509_pem_cert")
            if not pems:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
            return self._certified(pems[0])
        device = dict(context.invocation_metadata() or ()).get(DEVICE_ID_METADATA) or claimed
        if not isinstance(device, str) or not device:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"no device id (metadata {DEVICE_ID_METADATA!r})")
        try:
            return check_device_id(device)
        except ValueError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _certified(self, pem: bytes) -> str:
        verdict = self._certificates.get(pem)
        if verdict is None:
            try:
                verdict = client_identity(pem)
            except CertificateRefused as exc:
                verdict = exc
            self._certificates[pem] = verdict
            while len(self._certificates) > CERT_CACHE_SIZE:
                self._certificates.popitem(last=False)
        if isinstance(verdict, CertificateRefused):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"client certificate refused: {verdict}")
        return verdict

    def _joined(self, context: grpc.aio.ServicerContext) -> tuple[str, int]:
        device = self._device(context)
        try:
            node = self.registry.touch(device, session=context.peer())
        except SessionTaken as exc:
            raise Refused(grpc.StatusCode.ABORTED, str(exc)) from None
        if node is None:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {device!r} has not joined (or the server restarted): join again",
            )
        return device, node.node_id

    # -- RPCs ---------------------------------------------------------------------
    @_guarded("Join")
    async def join(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(fpb.JoinRequest, raw, "Join")
        device = self._device(context, request.device_id)
        if request.protocol_version != PROTOCOL_VERSION:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device speaks fedge protocol {request.protocol_version}, the server {PROTOCOL_VERSION}",
            )
        if len(request.profile) > MAX_JOIN_ENTRIES or len(request.codecs) > MAX_JOIN_ENTRIES:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_JOIN_ENTRIES} profile entries and codecs")
        missing = [c for c in self.required_codecs if c not in request.codecs]
        if missing:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION, f"device {device!r} lacks codecs {missing} that this federation uses"
            )
        try:
            node = self.registry.join(device, dict(request.profile), list(request.codecs), session=context.peer())
        except SessionTaken as exc:
            raise Refused(grpc.StatusCode.ABORTED, str(exc)) from None
        except ValueError as exc:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, str(exc)) from None
        log.info("device %s joined as node %d (join #%d)", device, node.node_id, node.joins)
        return fpb.JoinReply(
            node_id=node.node_id,
            protocol_version=PROTOCOL_VERSION,
            heartbeat_interval_s=self.settings.heartbeat_s,
            signing_certificate=self.signing_certificate,
            max_chunk_bytes=self.settings.chunk_bytes,
        ).SerializeToString()

    @_guarded("PullTask")
    async def pull_task(self, raw: bytes, context: grpc.aio.ServicerContext) -> None:
        request = _parse(fpb.PullRequest, raw, "PullTask")
        device, node_id = self._joined(context)
        asked = request.wait_s
        wait_s = min(asked, self.settings.pull_wait_s) if math.isfinite(asked) and asked > 0 else self.settings.pull_wait_s
        stop = self._open_poll(device)
        try:
            got = await self.board.take(node_id, wait_s, stop=stop)
        finally:
            self._close_poll(device, stop)
        if got is FINISHED or got is None:
            status = fpb.PULL_STATUS_FINISHED if got is FINISHED else fpb.PULL_STATUS_NO_TASK
            await self._write(context, fpb.Chunk(header=fpb.TransferHeader(status=status)).SerializeToString())
            return
        assert isinstance(got, Outgoing)
        sent = 0

        async def send_chunks() -> None:
            nonlocal sent
            for message in chunks(
                got.payload, got.task_id, self.settings.chunk_bytes,
                signature=got.signature, status=fpb.PULL_STATUS_TASK, sha256=got.sha256,
            ):
                data = message.SerializeToString()
                await self._write(context, data)
                sent += len(data) + GRPC_MESSAGE_PREFIX_BYTES

        try:  # wait_for, not asyncio.timeout: the server runs on Python 3.10 too
            await asyncio.wait_for(send_chunks(), self.settings.stream_total_s)
        except asyncio.TimeoutError:  # TimeoutError itself from 3.11 on
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"task transfer took longer than {self.settings.stream_total_s:g} s"
            ) from None
        finally:
            self.board.add_downlink(got, sent)
            self.registry.touch(device)

    @_guarded("PushUpdate")
    async def push_update(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        device, node_id = self._joined(context)
        if device in self._pushing:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, "a push from this device is already in flight", flood=True)
        self._pushing.add(device)
        try:
            return await asyncio.wait_for(self._receive(device, node_id, requests), self.settings.stream_total_s)
        except asyncio.TimeoutError:
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"update transfer took longer than {self.settings.stream_total_s:g} s"
            ) from None
        finally:
            self._pushing.discard(device)

    @_guarded("Heartbeat")
    async def heartbeat(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        _parse(fpb.HeartbeatRequest, raw, "Heartbeat")
        try:
            known = self.registry.touch(self._device(context), session=context.peer()) is not None
        except SessionTaken as exc:
            raise Refused(grpc.StatusCode.ABORTED, str(exc)) from None
        return fpb.HeartbeatReply(known=known).SerializeToString()

    @_guarded("Leave")
    async def leave(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(fpb.LeaveRequest, raw, "Leave")
        device = self._device(context)
        if not self.registry.leave(device, session=context.peer()):
            raise Refused(grpc.StatusCode.ABORTED, f"device {device!r} is connected from another session")
        log.info("device %s left: %s", device, request.reason[:200] or "no reason given")
        return fpb.LeaveReply().SerializeToString()

    # -- streams ------------------------------------------------------------------
    async def _write(self, context: grpc.aio.ServicerContext, data: bytes) -> None:
        try:
            await asyncio.wait_for(context.write(data), self.settings.stream_idle_s)
        except TimeoutError:
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the device read nothing for {self.settings.stream_idle_s:g} s"
            ) from None

    async def _next(self, requests: AsyncIterator[bytes]) -> bytes | None:
        try:
            return await asyncio.wait_for(anext(requests), self.settings.stream_idle_s)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the device sent nothing for {self.settings.stream_idle_s:g} s"
            ) from None

    async def _receive(self, device: str, node_id: int, requests: AsyncIterator[bytes]) -> bytes:
        """Read one push: its header is checked before any payload is taken in."""
        first = await self._next(requests)
        if first is None:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "bad transfer: the push ended before its header")
        head = self._chunk(first)
        if head.WhichOneof("part") != "header":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "bad transfer: data arrived before the transfer header")
        task_id, size = head.header.task_id, head.header.total_bytes
        status, task = self.board.status(node_id, task_id)
        if status is AnswerStatus.DUPLICATE:
            self.registry.touch(device)
            return fpb.PushReply(accepted=True, duplicate=True).SerializeToString()
        if task is None:
            return self._refuse(device, f"task {task_id[:100]!r}: {status.value}")
        limit = min(self.max_update_bytes, task.max_update_bytes or self.max_update_bytes)
        if size > limit:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"an update of {size} bytes exceeds this task's limit of {limit} bytes (model and codec of the round)",
            )
        joiner = Reassembler(limit)
        wire = len(first) + GRPC_MESSAGE_PREFIX_BYTES
        held = 0
        try:
            joiner.add(head)
            while (data := await self._next(requests)) is not None:
                wire += len(data) + GRPC_MESSAGE_PREFIX_BYTES
                chunk = self._chunk(data)
                joiner.add(chunk)
                held += len(chunk.data)
                self._hold(len(chunk.data))
            loop = asyncio.get_running_loop()
            received = await loop.run_in_executor(self.pool, joiner.finish)
            update = await loop.run_in_executor(self.pool, task_pb2.Update.FromString, received.payload)
        except TransferError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad transfer: {exc}") from None
        except DecodeError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"the update does not parse: {exc}") from None
        finally:
            self._hold(-held)
        if update.task_id != task_id:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"update answers {update.task_id[:100]!r}, the transfer says {task_id[:100]!r}",
            )
        status = self.board.answer(node_id, task_id, received.payload, wire)
        self.registry.touch(device)
        if status in (AnswerStatus.ACCEPTED, AnswerStatus.DUPLICATE):
            return fpb.PushReply(accepted=True, duplicate=status is AnswerStatus.DUPLICATE).SerializeToString()
        return self._refuse(device, f"task {task_id[:100]!r}: {status.value}")

    @staticmethod
    def _chunk(data: bytes) -> fpb.Chunk:
        try:
            return fpb.Chunk.FromString(data)
        except DecodeError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"bad transfer: a chunk does not parse: {exc}") from None

    def _hold(self, nbytes: int) -> None:
        self.buffered_bytes += nbytes
        self.buffered_peak_bytes = max(self.buffered_peak_bytes, self.buffered_bytes)

    def _refuse(self, device: str, reason: str) -> bytes:
        self.refusals["PUSH_REFUSED"] += 1
        self.complaints.warning("PushUpdate:refused", f"update from device {device} refused: {reason}")
        return fpb.PushReply(accepted=False, reason=reason).SerializeToString()

    def _open_poll(self, device: str) -> asyncio.Future[None]:
        """Register a long poll; beyond ``max_polls_per_device`` it is refused."""
        polls = self._polls.setdefault(device, deque())
        if len(polls) >= self.settings.max_polls_per_device:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this device already holds {len(polls)} long polls (server.max_polls_per_device)",
                flood=True,
            )
        stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        polls.append(stop)
        self.registry.polling(device, +1)
        return stop

    def _close_poll(self, device: str, stop: asyncio.Future[None]) -> None:
        polls = self._polls.get(device)
        if polls is not None and stop in polls:
            polls.remove(stop)
            if not polls:
                del self._polls[device]
        self.registry.polling(device, -1)

    def open_polls(self) -> int:
        """Long polls open right now (all devices)."""
        return sum(len(p) for p in self._polls.values())

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

    The ``grpc.aio`` server lives on an event loop in a thread of its own
    (``fedge-grpc-loop``); every public method here is safe to call from any other
    thread.

    Parameters
    ----------
    settings:
        The ``server.*`` settings (address, deadlines, chunk size, limits).
    credentials:
        TLS material and signing key; ``None`` serves plaintext (loopback only).
    required_codecs:
        Codec ids a device must support to join (the federation's uplink/downlink).
    max_update_bytes:
        Largest Update a device may push, whatever the task (bytes).
    """

    def __init__(
        self,
        settings: ServerConfig,
        credentials: ServerCredentials | None,
        required_codecs: Sequence[str] = (),
        max_update_bytes: int = 1 << 30,
    ) -> None:
        settings.check()
        if credentials is None:
            check_insecure(settings.address)
        self.settings = settings
        self.secure = credentials is not None
        self.registry = NodeRegistry(settings.liveness_s)
        self.board = TaskBoard()
        self.update_ceiling = UpdateCeiling(settings.update_envelope_bytes, max_update_bytes)
        self._signing_key = load_private_key(credentials.signing_key) if credentials else None
        self._pool = ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="fedge-cpu")
        self.servicer = FederationServicer(
            self.registry,
            self.board,
            settings,
            secure=self.secure,
            signing_certificate=credentials.signing_certificate if credentials else b"",
            required_codecs=required_codecs,
            max_update_bytes=max_update_bytes,
            pool=self._pool,
        )
        self.health = health.aio.HealthServicer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fedge-grpc-loop", daemon=True)
        self._thread.start()
        self._stopped = False
        try:
            self.port = self._call(self._bind(credentials))
        except BaseException:
            self._close_loop()
            raise
        if credentials is None:
            log.warning(
                "fedge-server is running INSECURE on %s: no TLS, devices are not authenticated and "
                "tasks are not signed. Use this for loopback development only.",
                settings.address,
            )

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout_s: float | None = None) -> Any:
        """Run ``coroutine`` on the server's loop; block this thread for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _bind(self, credentials: ServerCredentials | None) -> int:
        self._server = grpc.aio.server(
            handlers=[self.servicer.handler()],
            options=[
                ("grpc.max_receive_message_length", self.settings.chunk_bytes + (1 << 16)),
                ("grpc.max_concurrent_streams", self.settings.max_streams_per_connection),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        if credentials is None:
            port = self._server.add_insecure_port(self.settings.address)
        else:
            creds = grpc.ssl_server_credentials(
                [(credentials.private_key, credentials.certificate)],
                root_certificates=credentials.ca,
                require_client_auth=True,
            )
            port = self._server.add_secure_port(self.settings.address, creds)
        if port == 0:
            raise OSError(f"cannot listen on {self.settings.address}")
        return port

    @property
    def address(self) -> str:
        """``host:port`` devices connect to (the bound port when 0 was asked for)."""
        host = self.settings.address.rsplit(":", 1)[0]
        return f"{'127.0.0.1' if host in ('0.0.0.0', '[::]') else host}:{self.port}"

    def outgoing(
        self, node_id: int, server_round: int, task_id: str, payload: bytes, max_update_bytes: int | None = None
    ) -> Outgoing:
        """A Task ready to post: its digest, (when secure) its signature, its answer's size limit."""
        sha256 = digest(payload)
        signature = sign_task(self._signing_key, sha256) if self._signing_key is not None else b""
        return Outgoing(task_id, node_id, server_round, payload, sha256, signature, max_update_bytes=max_update_bytes)

    def stats(self) -> dict[str, Any]:
        """Transport counters now: bytes buffered, open polls, refusals by status code."""
        servicer = self.servicer

        async def read() -> dict[str, Any]:
            return {
                "buffered_bytes": servicer.buffered_bytes,
                "buffered_peak_bytes": servicer.buffered_peak_bytes,
                "open_polls": servicer.open_polls(),
                "refusals": dict(servicer.refusals),
            }

        return self._call(read(), timeout_s=10) if not self._stopped else {}

    def start(self) -> FederationServer:
        async def start() -> None:
            await self._server.start()
            for service in ("", SERVICE):
                await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

        self._call(start())
        return self

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving. Devices are not told the federation is over (``board.finish``
        does that): to them this looks like a crash, and they reconnect."""
        if self._stopped:
            return

        async def stop() -> None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(grace_s)

        try:
            self._call(stop())
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()
        self._pool.shutdown(wait=False)

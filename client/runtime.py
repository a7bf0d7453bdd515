"""The device loop behind ``fedge-client``: join, pull, train, push, reconnect.

:class:`DeviceRuntime` keeps one :class:`~fedge.client.EdgeClient` for its whole life,
so whatever the client carries across rounds (its model, error-feedback residuals)
survives reconnects and server restarts. Around it:

* reconnect with exponential backoff and jitter after any transport failure;
* a heartbeat thread while connected, so a long local training is not mistaken
  for a vanished device; "unknown device" answers trigger a fresh Join;
* every Task's signature is checked against the server's signing certificate (which
  must be issued by the federation's CA) before the model is loaded; a task that
  fails the check (or arrives corrupt: digest, size, framing) is refused, the model
  is left as it was, the reason goes back to the server as the task's error, and the
  loop goes on;
* a push the server refuses (status INVALID_ARGUMENT or RESOURCE_EXHAUSTED: too
  large, malformed) is logged and counted, and the loop goes on; ABORTED (another
  connection holds this device's identity) reconnects with backoff like any
  transport failure;
* no heartbeats while a long poll is open (the open poll shows the server the
  device is there, as the protocol says);
* answers are cached by task id, so a task offered again after a dropped
  connection is pushed again, never trained twice (pushes are idempotent);
* :meth:`DeviceRuntime.stop` (SIGTERM) ends a long poll at once, finishes a task
  in progress, says Leave and returns.

No flwr anywhere on this path.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from fedge.client.train_config import TrainConfig
from fedge.client.connection import Connection, DeviceCredentials, Pulled
from fedge.client.edge_client import EdgeClient
from fedge.protos.codecs import available
from fedge.protos.transfer import TransferError
from fedge.protos.v1 import federation_pb2 as fpb
from fedge.protos.v1 import task_pb2
from fedge.tasks.base import FederatedTask, Split

log = logging.getLogger(__name__)

#: Join refusals that retrying cannot fix (protocol or codec mismatch, identity clash).
FATAL_JOIN_CODES = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
#: Push refusals that resending the same bytes cannot fix: the answer is dropped.
REFUSED_PUSH_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
EXIT_OK, EXIT_GAVE_UP, EXIT_REFUSED = 0, 1, 3
CACHED_ANSWERS = 4


class FatalError(RuntimeError):
    """A condition retrying cannot fix (the server refused the device, or vice versa)."""


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential, "equal jitter".

    The ceiling doubles per attempt up to ``cap_s``; the delay is uniform in
    [ceiling / 2, ceiling], so devices that lost the server together spread out.
    """
    ceiling = min(cap_s, base_s * 2 ** max(attempt - 1, 0))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


@dataclass
class RuntimeSettings:
    """How a device reaches its server and behaves on the way."""

    server: str  # host:port
    device_id: str
    credentials: DeviceCredentials | None  # None: plaintext, development only
    server_name: str | None = None  # TLS name to expect, if not the server's host
    seed: int = 0
    pull_wait_s: float = 30.0  # longest long poll
    rpc_timeout_s: float = 30.0  # Join, Heartbeat, Leave
    transfer_timeout_s: float = 600.0  # time allowed for one Task or Update transfer
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_retries: int = 0  # consecutive failed connections before giving up; 0 = never give up
    max_task_bytes: int = 1 << 30
    chunk_bytes: int = 1 << 20  # until the server says otherwise
    profile: Mapping[str, float] = field(default_factory=dict)
    # Emulated slower hardware: each task costs ``slowdown`` times the CPU time it took
    # here (the device waits (slowdown - 1) x the task's CPU seconds after the work,
    # before pushing; the work and the update are the same). CPU time, not wall time,
    # so a busy machine does not stretch the wait too. 1 = as fast as this machine.
    slowdown: float = 1.0


@dataclass
class RuntimeStats:
    """What the device did (for logs and tests)."""

    joins: int = 0
    tasks: int = 0  # tasks handled (trained or evaluated)
    refused: int = 0  # tasks refused before loading (bad signature, corrupt transfer, wrong node, junk)
    refused_pushes: int = 0  # answers the server refused with a status code (too large, malformed)
    pushes: int = 0
    duplicates: int = 0  # pushes the server already had
    reconnects: int = 0
    downlink_grpc_bytes: int = 0
    uplink_grpc_bytes: int = 0
    last_refusal: str = ""


class DeviceRuntime:
    """One device's federation loop around an EdgeClient."""

    def __init__(
        self,
        task: FederatedTask,
        data: Split,
        settings: RuntimeSettings,
        defaults: TrainConfig | None = None,
        runtime: str = "torch",
    ) -> None:
        self.task = task
        self.runtime = runtime  # training runtime of the EdgeClient (fedge.client.trainer)
        self.data = data
        self.settings = settings
        self.defaults = defaults
        self.client: EdgeClient | None = None
        self.node_id: int | None = None
        self.stats = RuntimeStats()
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._verifier = None
        self._stop = threading.Event()
        self._rejoin = threading.Event()
        self._connection: Connection | None = None
        self._working_on = ""
        self._rng = random.Random(f"{settings.device_id}-{settings.seed}")

    # -- control ------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler): a long poll ends at once."""
        self._stop.set()
        connection = self._connection
        if connection is not None:
            connection.cancel_pull()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop -----------------------------------------------------------------
    def run(self) -> int:
        """Run until the federation finishes, :meth:`stop`, or too many failures.

        Returns the process exit status: 0 finished or stopped, 1 gave up
        reconnecting, 3 refused (by the server, or the server's signing key).
        """
        attempt = 0
        while not self.stopping:
            connection = Connection(
                self.settings.server, self.settings.device_id, self.settings.credentials, self.settings.server_name
            )
            self._connection = connection
            try:
                self._join(connection)
                attempt = 0
                if self._serve(connection):
                    return EXIT_OK
            except FatalError as exc:
                log.error("giving up: %s", exc)
                return EXIT_REFUSED
            except (grpc.RpcError, TransferError) as exc:  # TransferError: a stream with no task header
                if self.stopping:
                    self._say_goodbye(connection)  # on this connection: it holds the device's session
                    return EXIT_OK
                attempt += 1
                self.stats.reconnects += 1
                if self.settings.max_retries and attempt > self.settings.max_retries:
                    log.error("giving up after %d failed connections: %s", attempt - 1, _describe(exc))
                    return EXIT_GAVE_UP
                delay = backoff_delay(attempt, self.settings.backoff_base_s, self.settings.backoff_max_s, self._rng)
                log.warning("connection lost (%s); retry %d in %.1f s", _describe(exc), attempt, delay)
                self._stop.wait(delay)
            finally:
                self._connection = None
                connection.close()
        self._say_goodbye()
        return EXIT_OK

    def _join(self, connection: Connection) -> None:
        try:
            reply = connection.join(
                self.settings.device_id, self.settings.profile, available(), self.settings.rpc_timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() in FATAL_JOIN_CODES:
                raise FatalError(f"the server refused to let this device join: {exc.details()}") from None
            raise
        self._rejoin.clear()
        self.stats.joins += 1
        if self.node_id is not None and reply.node_id != self.node_id:
            raise FatalError(f"the server moved this device from node {self.node_id} to {reply.node_id}")
        self.node_id = reply.node_id
        if reply.max_chunk_bytes:
            self.settings.chunk_bytes = reply.max_chunk_bytes
        self._verifier = self._trust(reply.signing_certificate)
        if self.client is None:
            self.client = EdgeClient(
                self.task, self.data, reply.node_id, self.defaults, self.settings.seed, runtime=self.runtime
            )
        self._heartbeat_interval = reply.heartbeat_interval_s or 5.0
        log.info("joined %s as node %d", self.settings.server, reply.node_id)

    def _trust(self, signing_certificate: bytes):
        credentials = self.settings.credentials
        if credentials is None:
            if self._verifier is None:
                log.warning("insecure channel: task signatures are not verified (development only)")
            return None
        if not signing_certificate:
            raise FatalError("the server does not sign its tasks; refusing to train on unsigned models")
        from fedge.protos.signing import SignatureError, TaskVerifier  # needs the `client` extra

        try:
            return TaskVerifier.from_certificate(signing_certificate, credentials.ca)
        except SignatureError as exc:
            raise FatalError(f"the server's signing certificate is not trusted: {exc}") from None

    def _serve(self, connection: Connection) -> bool:
        """Pull and answer tasks until finished (True), stopped or reconnect needed (False)."""
        beats = threading.Event()
        beater = threading.Thread(target=self._heartbeats, args=(connection, beats), daemon=True)
        beater.start()
        try:
            while not self.stopping and not self._rejoin.is_set():
                pulled = connection.pull(
                    self.settings.pull_wait_s, self.settings.max_task_bytes, self.settings.transfer_timeout_s
                )
                self.stats.downlink_grpc_bytes += pulled.wire_bytes
                status = pulled.header.status
                if status == fpb.PULL_STATUS_FINISHED:
                    log.info("the federation is finished")
                    self._say_goodbye(connection, "federation finished")
                    return True
                if status != fpb.PULL_STATUS_TASK:
                    continue
                task_id, update = self._answer(pulled)
                self._push(connection, task_id, update)
            if self.stopping:
                self._say_goodbye(connection)  # on this connection: it holds the device's session
                return True
            return False
        finally:
            beats.set()
            beater.join(timeout=1.0)

    def _answer(self, pulled: Pulled) -> tuple[str, bytes]:
        task_id = pulled.header.task_id
        cached = self._answers.get(task_id)
        if cached is not None:
            log.info("task %s was offered again: pushing the answer already computed", task_id)
            return task_id, cached
        assert self.client is not None
        try:
            if pulled.broken or pulled.payload is None:
                raise ValueError(pulled.broken or "the task arrived without its bytes")
            task = self._check(pulled)
        except ValueError as exc:  # SignatureError and DecodeError are ValueErrors too
            reason = f"task refused by device: {exc}"
            log.warning("%s (the model is left as it was)", reason)
            self.stats.refused += 1
            self.stats.last_refusal = reason
            update = task_pb2.Update(task_id=task_id, node_id=self.node_id or 0, error=reason)
        else:
            self._working_on = task_id
            started = time.thread_time()  # the training runs in this thread (fedge-client: --threads 1)
            update = self.client.handle(task)
            self._slow_down(time.thread_time() - started)
            self._working_on = ""
            self.stats.tasks += 1
        data = update.SerializeToString()
        self._answers[task_id] = data
        while len(self._answers) > CACHED_ANSWERS:
            self._answers.popitem(last=False)
        return task_id, data

    def _slow_down(self, took_s: float) -> None:
        """Stretch a task that took ``took_s`` CPU seconds by ``(slowdown - 1) x took_s`` (a stop cuts it short)."""
        if self.settings.slowdown > 1.0:
            self._stop.wait((self.settings.slowdown - 1.0) * took_s)

    def _check(self, pulled: Pulled) -> task_pb2.Task:
        """The Task, once its signature, id and destination check out."""
        if self._verifier is not None:
            self._verifier.verify(pulled.header.sha256, pulled.header.signature)
        try:
            task = task_pb2.Task.FromString(pulled.payload)
        except DecodeError as exc:
            raise ValueError(f"task bytes do not parse: {exc}") from None
        if task.task_id != pulled.header.task_id:
            raise ValueError(f"task id {task.task_id!r} differs from the transfer's {pulled.header.task_id!r}")
        if task.node_id != self.node_id:
            raise ValueError(f"task is for node {task.node_id}, this device is node {self.node_id}")
        return task

    def _push(self, connection: Connection, task_id: str, update: bytes) -> None:
        try:
            reply, sent = connection.push(task_id, update, self.settings.chunk_bytes, self.settings.transfer_timeout_s)
        except grpc.RpcError as exc:
            if exc.code() not in REFUSED_PUSH_CODES:
                raise
            self.stats.refused_pushes += 1
            self._answers.pop(task_id, None)
            log.warning("server refused the answer to task %s: %s", task_id, _describe(exc))
            return
        self.stats.uplink_grpc_bytes += sent
        self.stats.pushes += 1
        if reply.duplicate:
            self.stats.duplicates += 1
        if not reply.accepted:
            log.warning("server did not take the answer to task %s: %s", task_id, reply.reason)

    def _heartbeats(self, connection: Connection, done: threading.Event) -> None:
        while not done.wait(self._heartbeat_interval):
            if connection.pulling:
                continue  # an open long poll is presence enough
            try:
                reply = connection.heartbeat(self._working_on, self.settings.rpc_timeout_s)
            except grpc.RpcError:
                continue  # the main loop notices a dead connection on its own
            if not reply.known:
                log.warning("the server does not know this device (it restarted?): joining again")
                self._rejoin.set()
                connection.cancel_pull()

    def _say_goodbye(self, connection: Connection | None = None, reason: str = "device stopping") -> None:
        owned = connection is None
        if connection is None:
            if self.node_id is None:
                return
            connection = Connection(
                self.settings.server, self.settings.device_id, self.settings.credentials, self.settings.server_name
            )
        try:
            connection.leave(reason, timeout_s=min(self.settings.rpc_timeout_s, 5.0))
        except grpc.RpcError as exc:
            log.info("could not say goodbye: %s", _describe(exc))
        finally:
            if owned:
                connection.close()


def _describe(exc: Exception) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code else 'error'}: {details}"

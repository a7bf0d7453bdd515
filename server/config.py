"""Settings of the gRPC server: the ``server.*`` keys shared by fedge-server and fedge-sim.

Part of the typed Hydra schema (``FedgeConfig.server``), so ``server.round_timeout_s=abc``
fails with Hydra's own message, and :meth:`ServerConfig.check` names a value that
type-checks but cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.protos.transfer import DEFAULT_CHUNK_BYTES

#: gRPC's default largest message; a chunk (data + header) must stay under it.
GRPC_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class ServerConfig:
    """How the gRPC Federation server runs."""

    address: str = "0.0.0.0:8443"  # fedge-server listens here (the grpc sim backend: 127.0.0.1, a free port)
    certs: str = "certs"  # fedge-certs directory: ca.pem, server.pem/.key, signing.pem/.key
    insecure: bool = False  # plaintext, devices unauthenticated, tasks unsigned: loopback development only
    round_timeout_s: float = 300.0  # real (wall-clock) deadline of a gRPC round, seconds after its tasks are posted
    round_deadline_s: float = 0.0  # simulated deadline (device profiles, device=...): stragglers dropped; 0 = none
    min_reply_fraction: float = 0.5  # replies needed (of nodes sampled) or the round is abandoned; see reply_grace_s
    heartbeat_s: float = 5.0  # devices report at least this often; silent for 3x this = gone
    join_timeout_s: float = 600.0  # longest wait for num_clients devices before a round
    pull_wait_s: float = 30.0  # longest a PullTask long poll is held open
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # data bytes per gRPC message of a transfer
    max_workers: int = 4  # threads for CPU work off the event loop (digests, parsing); devices cost no thread
    checkpoint_dir: str = "checkpoint"  # fedge-server: atomic checkpoint after every round
    resume: bool = False  # fedge-server: continue from checkpoint_dir
    # -- transport limits (per device, per stream); seconds unless named otherwise ---------------
    # A round closes once min_reply_fraction of its devices answered plus a grace period: the rest
    # get max(reply_grace_s, seconds the quorum took) more. Raise it for fleets of very uneven speed.
    reply_grace_s: float = 10.0
    # Long polls a device may hold open; more are refused (RESOURCE_EXHAUSTED). 1-4 is plenty.
    max_polls_per_device: int = 2
    # A call refused for exceeding a per-device limit (polls, pushes in flight) gets its answer this
    # late: with max_streams_per_connection it caps a flooding device at streams / delay calls per second.
    refusal_delay_s: float = 1.0
    # Concurrent RPCs (HTTP/2 streams) per connection; more wait on the device's side, costing the
    # server nothing. A device needs 3 (a poll, a push, a heartbeat); floods are capped here first.
    max_streams_per_connection: int = 8
    # A push or pull stream with no message moving for this long is cut (DEADLINE_EXCEEDED).
    # Raise it for devices on very slow links (a 1 MiB chunk must move within it).
    stream_idle_s: float = 30.0
    # Longest one push or pull transfer may take in all (DEADLINE_EXCEEDED after).
    stream_total_s: float = 600.0
    # Largest Update accepted for a task = 2 x the size of a sample update of the task's model in
    # the round's uplink codec + this envelope (metrics, ids), bytes (fedge.server.push_limits).
    update_envelope_bytes: int = 65536
    # Bad-request log lines (junk bytes, refused streams) are rate-limited to one per this many seconds.
    error_log_interval_s: float = 5.0

    @property
    def liveness_s(self) -> float:
        """A device silent this long is gone."""
        return 3 * self.heartbeat_s

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        if self.round_timeout_s <= 0:
            raise ValueError(f"server.round_timeout_s must be > 0, got {self.round_timeout_s}")
        if self.round_deadline_s < 0:
            raise ValueError(f"server.round_deadline_s must be >= 0 (0 = no deadline), got {self.round_deadline_s}")
        if not 0 <= self.min_reply_fraction <= 1:
            raise ValueError(f"server.min_reply_fraction must be in [0, 1], got {self.min_reply_fraction}")
        if self.heartbeat_s <= 0:
            raise ValueError(f"server.heartbeat_s must be > 0, got {self.heartbeat_s}")
        if self.pull_wait_s <= 0:
            raise ValueError(f"server.pull_wait_s must be > 0, got {self.pull_wait_s}")
        if not 1 <= self.chunk_bytes <= GRPC_MAX_MESSAGE_BYTES - 1024:
            raise ValueError(
                f"server.chunk_bytes must be in [1, {GRPC_MAX_MESSAGE_BYTES - 1024}] (gRPC's message limit), "
                f"got {self.chunk_bytes}"
            )
        if self.max_workers < 1:
            raise ValueError(f"server.max_workers must be >= 1, got {self.max_workers}")
        self.check_limits()
        if ":" not in self.address:
            raise ValueError(f"server.address must be HOST:PORT, got {self.address!r}")

    def check_limits(self) -> None:
        """Raise ``ValueError`` naming the first transport limit that cannot work."""
        if self.reply_grace_s < 0:
            raise ValueError(f"server.reply_grace_s must be >= 0, got {self.reply_grace_s}")
        if self.max_streams_per_connection < 4:
            raise ValueError(f"server.max_streams_per_connection must be >= 4, got {self.max_streams_per_connection}")
        if self.refusal_delay_s < 0:
            raise ValueError(f"server.refusal_delay_s must be >= 0, got {self.refusal_delay_s}")
        if self.max_polls_per_device < 1:
            raise ValueError(f"server.max_polls_per_device must be >= 1, got {self.max_polls_per_device}")
        if self.stream_idle_s <= 0 or self.stream_total_s <= 0:
            raise ValueError(
                f"server.stream_idle_s and server.stream_total_s must be > 0, got {self.stream_idle_s}, {self.stream_total_s}"
            )
        if self.update_envelope_bytes < 1024:
            raise ValueError(f"server.update_envelope_bytes must be >= 1024, got {self.update_envelope_bytes}")
        if self.error_log_interval_s < 0:
            raise ValueError(f"server.error_log_interval_s must be >= 0, got {self.error_log_interval_s}")

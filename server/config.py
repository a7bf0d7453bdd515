"""Settings of the gRPC server: the ``server.*`` keys shared by fedge-server and fedge-sim.

Part of the typed Hydra schema (``FedgeConfig.server``), so ``server.round_timeout_s=abc``
fails with Hydra's own message, and :meth:`ServerConfig.check` names a value that
type-checks but cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.protos.transfer import DEFAULT_CHUNK_BYTES
from fedge.strategies.reply_validation import ReplyPolicy

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
    min_reply_fraction: float = 0.5  # replies needed by the deadline (of nodes sampled) or the round is abandoned
    heartbeat_s: float = 5.0  # devices report at least this often; silent for 3x this = gone
    join_timeout_s: float = 600.0  # longest wait for num_clients devices before a round
    pull_wait_s: float = 30.0  # longest a PullTask long poll is held open
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # data bytes per gRPC message of a transfer
    max_workers: int = 64  # gRPC server threads: >= 2 per device (a long poll holds one; heartbeats, pushes)
    checkpoint_dir: str = "checkpoint"  # fedge-server: atomic checkpoint after every round
    resume: bool = False  # fedge-server: continue from checkpoint_dir
    # -- reply validation (fedge.strategies.reply_validation; fedge-sim too) and checkpoints --
    max_num_examples: int = 0  # cap on a reply's num-examples (larger claims are capped); 0 = from the task: largest partition (fedge-sim) / train-set size (fedge-server)
    max_update_norm: float = 0.0  # fixed bound on a decoded update's L2 norm (above: dropped); 0 = 100 x max(1, ||global model||); inf = none
    max_update_norm_median: float = 10.0  # drop updates above this multiple of the round's median update norm (rounds of >= 3 replies); 0 = off
    keep_checkpoints: int = 3  # fedge-server keeps the newest N checkpoints; --resume takes the newest valid one

    def reply_policy(self, task_max_num_examples: int) -> ReplyPolicy:
        """The reply validation these settings ask for; ``task_max_num_examples`` is the
        task-derived cap used when ``max_num_examples`` is 0."""
        return ReplyPolicy(
            max_num_examples=self.max_num_examples or task_max_num_examples,
            max_update_norm=self.max_update_norm,
            max_update_norm_median=self.max_update_norm_median,
        )

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
        if self.max_workers < 2:
            raise ValueError(f"server.max_workers must be >= 2, got {self.max_workers}")
        try:
            self.reply_policy(0)  # ReplyPolicy names a bad validation setting
        except ValueError as exc:
            raise ValueError(f"server.{exc}") from None
        if self.keep_checkpoints < 1:
            raise ValueError(f"server.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if ":" not in self.address:
            raise ValueError(f"server.address must be HOST:PORT, got {self.address!r}")

"""The structured (typed) Hydra schema of every fedge experiment (``fedge-sim``, ``fedge-server``).

The YAML tree in ``conf/`` fills these dataclasses; OmegaConf type-checks every value
and override against them (``client.lr=abc`` fails with the key and the value).
Library objects (task, strategy, partitioner) are chosen by Hydra ``_target_``.
Only data lives here: what a setting does lives with the code that uses it
(:class:`~fedge.client.train_config.TrainConfig` is the device's own dataclass, reused as
the ``client`` schema; a device profile's pricing is
:class:`fedge.simulations.devices.profile.DeviceProfile`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from fedge.client.train_config import TrainConfig
from fedge.protos.transfer import DEFAULT_CHUNK_BYTES
from fedge.strategies.fedbuff_config import FedBuffConfig
from fedge.strategies.reply_validation import ReplyPolicy

#: ``omegaconf.MISSING`` (a value the YAML must set), spelled out: a worker process that
#: unpickles one of these dataclasses (``AttackConfig`` in a ``ClientRecipe``) then imports
#: neither Hydra nor OmegaConf (~0.3 s of start-up).
MISSING = "???"

SCHEMA_NAME = "fedge_schema"
#: ``task_base/open_args``: an ``args`` mapping that takes new keys without a ``+``
#: (``conf/task/custom.yaml``: ``task.args.n=600`` for the user's constructor).
OPEN_ARGS = ("task_base", "open_args")

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
    # -- reply validation (fedge.strategies.reply_validation; fedge-sim too) and checkpoints --
    max_num_examples: int = 0  # cap on a reply's num-examples (larger claims are capped); 0 = from the task: largest partition (fedge-sim) / train-set size (fedge-server)
    max_update_norm: float = 0.0  # fixed bound on a decoded update's L2 norm (above: dropped); 0 = 100 x max(1, ||global model||); inf = none
    max_update_norm_median: float = 10.0  # drop updates above this multiple of the round's median update norm (rounds of >= 3 replies); 0 = off
    # Flower's FedMedian/FedTrimmedAvg/Krum/MultiKrum/Bulyan on a top-k/random-k uplink collapse; refused by
    # default, naming fedge's sparse-aware rule (fedge.conf.sparse_rules). true: run Flower's anyway.
    allow_flower_robust_on_sparse: bool = False
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
        if self.max_workers < 1:
            raise ValueError(f"server.max_workers must be >= 1, got {self.max_workers}")
        self.check_limits()
        try:
            self.reply_policy(0)  # ReplyPolicy names a bad validation setting
        except ValueError as exc:
            raise ValueError(f"server.{exc}") from None
        if self.keep_checkpoints < 1:
            raise ValueError(f"server.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
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


@dataclass
class DeviceProfileConfig:
    """One kind of device (``conf/device/profile/*.yaml``). Units are in the field names
    (samples/s, Mbit/s, J, MB, hours); checked and priced by
    :class:`fedge.simulations.devices.profile.DeviceProfile`."""

    name: str = "device"
    samples_per_s: float = 1000.0  # training throughput (forward + backward + step) on the task's model
    downlink_mbps: float = 10.0  # server -> device, Mbit/s (1e6 bit/s)
    uplink_mbps: float = 5.0  # device -> server, Mbit/s
    joules_per_sample: float = 0.0  # energy of training on one example
    joules_per_byte_down: float = 0.0  # radio energy per byte received
    joules_per_byte_up: float = 0.0  # radio energy per byte sent
    availability: float = 1.0  # probability of being online in a round (within online_hours)
    online_hours: list[int] = field(default_factory=list)  # hours of the day (0-23) it can be online; [] = all
    memory_mb: float = 0.0  # training-memory budget (client.memory_mb); 0 = no limit
    # the deployment budget fedge-search holds a model to (0 = none; see conf/device/profile/wearable.yaml)
    flash_kb: float = 0.0  # flash for the int8 model file, KB (1,000 bytes)
    train_ram_kb: float = 0.0  # peak training memory (weights, gradients, momentum, activations), KB
    latency_ms: float = 0.0  # ms per inference (one example) on the device
    int8_macs_per_s: float = 0.0  # int8 multiply-accumulates per second of the inference core (latency = MACs / this)


@dataclass
class CompressionConfig:
    """What crosses the network (``conf/compression/*.yaml``).

    ``codec`` encodes client deltas (uplink); the fields below it are that codec's
    parameters, each used only by the codecs that take it. ``downlink`` encodes the
    broadcast model; with ``downlink_delta`` the broadcast is the compressed change
    from the model devices hold, with server-side error feedback.
    """

    name: str = "none"
    codec: str = "fp32"  # fp32, fp16, q1..q8[s], uniform, topk, randk, sign, powersgd, kmeans
    ratio: float = 0.01  # topk, randk: share of entries kept
    scope: str = "tensor"  # topk: ratio of each tensor ("tensor") or of the whole update ("global")
    values: str = "fp32"  # topk, randk: codec of the kept values (fp32, fp16, q8, ...)
    bits: int = 8  # uniform, kmeans
    stochastic: bool = False  # uniform: unbiased stochastic rounding
    per_channel: bool = False  # uniform: one scale per output channel
    unbiased: bool = False  # randk: scale kept values by d/k
    rank: int = 2  # powersgd
    error_feedback: bool = False  # clients carry the compression error to the next round
    dense_below: int = 0  # float tensors with fewer elements go with `fallback`
    fallback: str = "fp32"
    downlink: str = "fp32"
    downlink_delta: bool = False
    max_update_bytes: int = 1 << 30


@dataclass
class BackendConfig:
    """Where simulated clients run. ``local``: worker processes on this machine;
    ``ray``: a Ray actor pool (``conf/backend/ray.yaml``)."""

    name: str = "local"
    num_workers: int = 2  # worker processes; 0 = run clients in the server process
    threads_per_worker: int = 1  # torch intra-op threads per worker (or Ray actor)
    # ray only:
    address: Optional[str] = None  # None: private Ray on this machine; "auto", "ray://host:port"
    num_actors: int = 4  # Ray actors, clients pinned to them
    cpus_per_actor: float = 1.0  # Ray logical CPUs each actor reserves


@dataclass
class DeviceConfig:
    """Simulated devices (``conf/device/*.yaml``): profiles and the fleet's mix of them.

    ``mix`` maps profile names to shares of the clients (summing to 1); each client gets
    a profile deterministically from the seed (:mod:`fedge.simulations.devices.fleet`). An
    empty mix (``device=none``) simulates nothing: no simulated time, energy or deadline.
    """

    name: str = "none"
    profiles: dict[str, DeviceProfileConfig] = field(default_factory=dict)  # conf/device/profile/*.yaml
    mix: dict[str, float] = field(default_factory=dict)  # profile name -> share of clients
    start_hour: float = 0.0  # simulated hour of day when round 1 starts (for online_hours)
    round_interval_s: float = 0.0  # simulated seconds between round starts, at least (0: back to back)
    speed_sigma: float = 0.0  # lognormal spread of samples_per_s within a profile (fedge.simulations.devices.speed); 0 = none
    trace: str = ""  # a device trace CSV (fedge.simulations.devices.trace) replacing the profiles; "" = profiles


@dataclass
class ModeConfig(FedBuffConfig):
    """Synchronous rounds or FedBuff (``conf/mode/*.yaml``; :mod:`fedge.strategies.fedbuff`).

    ``mode=async``: ``rounds`` counts aggregation steps (each of ``buffer_size`` updates);
    the FedBuff fields are :class:`~fedge.strategies.fedbuff.FedBuffConfig`'s.
    """

    name: str = "sync"  # sync or async
    availability_slot_s: float = 60.0  # async sim: seconds one availability draw of a profiled device holds
    stop_accuracy: float = 0.0  # async: end the run at the first step reaching this central accuracy; 0 = run all steps


@dataclass
class SecAggConfig:
    """Secure aggregation (``conf/secagg/*.yaml``; :mod:`fedge.strategies.secagg`).

    The quantisation and sparsity come from the ``compression`` group where it says
    (:func:`fedge.conf.secagg_setup.secagg_settings`); the rest is here.
    """

    name: str = "off"
    enabled: bool = False
    value_bits: int = 8  # bits per coordinate when the codec does not set them
    clip: float = 0.2  # coordinates clipped to [-clip, clip] before quantising
    neighbours: int = 0  # k; 0 = the smallest even k that survives `dropout` (grows with log n)
    threshold: int = 0  # t; 0 = k // 2 + 1
    dropout: float = 0.3  # share of sampled devices the default k is sized to lose mid-round (< 0.5)
    max_examples: float = 400.0  # weight 1 at this many examples; 0 = equal weights


MODEL_ATTACKS = ("signflip", "scaling", "noise", "alie", "ipm")
DATA_ATTACKS = ("labelflip", "backdoor")
ATTACKS = ("none", *MODEL_ATTACKS, *DATA_ATTACKS, "metadata")


@dataclass
class AttackConfig:
    """Simulated attackers (``conf/attack/*.yaml``; :mod:`fedge.simulations.attacks`). Units: deltas in model units, pixels of the task's input."""

    name: str = "none"
    fraction: float = 0.0  # share of devices that attack, [0, 1)
    start_round: int = 1  # first round they attack (honest before)
    seed: int = -1  # draws the attackers; -1 = the run's seed
    scale: float = 10.0  # signflip / scaling factor
    noise_std: float = 0.1  # noise: std of the added Gaussian per coordinate
    z: float = 1.0  # alie: how many sigmas from the mean (the paper's z_max, ~1 for 10-50 devices)
    epsilon: float = 0.5  # ipm: the attacker sends -epsilon x mean (epsilon < 1: small, hard to spot)
    target_label: int = 0  # backdoor: the label the trigger should produce
    trigger_size: int = 3  # backdoor: side of the square trigger, pixels
    poison_fraction: float = 0.5  # backdoor: share of the attacker's examples that carry the trigger
    num_examples: float = 1e12  # metadata: the num-examples it claims

    def check(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack.name must be one of {ATTACKS}, got {self.name!r}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"attack.fraction must be in [0, 1), got {self.fraction}")
        if self.start_round < 1:
            raise ValueError(f"attack.start_round must be >= 1, got {self.start_round}")
        if self.trigger_size < 1 or not 0.0 < self.poison_fraction <= 1.0:
            raise ValueError("attack.trigger_size must be >= 1 and attack.poison_fraction in (0, 1]")

    @property
    def active(self) -> bool:
        return self.name != "none" and self.fraction > 0


@dataclass
class LowRankSchema:
    """``shape.lowrank``: truncated-SVD factorisation (:mod:`fedge.tasks.shaping.lowrank`); one of rank/energy/budget > 0."""

    rank: int = 0  # the same rank for every factorised layer
    energy: float = 0.0  # smallest rank keeping this share of sum(S^2), e.g. 0.95
    budget: float = 0.0  # largest rank whose pair has <= this share of the layer's weights, e.g. 0.4
    layers: list[str] = field(default_factory=list)  # module-name patterns to consider; [] = all Linear/Conv
    skip: list[str] = field(default_factory=list)  # module-name patterns never factorised


@dataclass
class PruneSchema:
    """``shape.prune``: magnitude pruning on a schedule (:mod:`fedge.strategies.magnitude_pruning`); sparsity 0 = off."""

    sparsity: float = 0.0
    start_round: int = 1
    end_round: int = 1
    every: int = 1


@dataclass
class InitSchema:
    """``shape.init``: start from a checkpoint (:mod:`fedge.tasks.shaping.checkpoint`); path "" = fresh."""

    path: str = ""  # an .npz of state names -> arrays (a run's final_model.npz)
    freeze_backbone: bool = False  # train only the tensors the checkpoint did not fill (the new head)


@dataclass
class DistillSchema:
    """``shape.distill``: the task's model learns from a teacher (:mod:`fedge.tasks.shaping.distillation`)."""

    teacher_path: str = ""  # the teacher's weights (.npz); "" = no distillation
    teacher_task: dict[str, Any] = field(default_factory=dict)  # overrides of `task` that build the teacher (e.g. width: 64)
    temperature: float = 2.0  # measured: 4.0 with alpha 0.7 left a 9x smaller digits student below its scratch twin
    alpha: float = 0.5  # share of the soft-target term
    teacher_to_devices: bool = False  # soft targets of the devices' data need the teacher there: must be set
    feature_weight: float = 0.0  # attention-transfer hint on feature_layer (0 = off; ~20: 1000 stalled an image student)
    feature_layer: str = "features"  # module name in both student and teacher whose (N, C, H, W) output is matched
    anneal_rounds: int = 0  # >= 2: alpha moves linearly to alpha_end by this round (hint weight alike); 0 = constant
    alpha_end: float = 0.0  # alpha from round anneal_rounds on (more labels late), in [0, 1]


@dataclass
class StructuredSchema:
    """``shape.structured``: channel pruning at rounds (:mod:`fedge.tasks.shaping.channel_pruning`); ratio 0 = off."""

    ratio: float = 0.0  # share of each prunable layer's channels removed by the last pruning round, e.g. 0.35
    rounds: list[int] = field(default_factory=list)  # rounds to prune at (gradually), e.g. [3, 6]
    importance: str = "l2"  # l1 | l2: norm of each channel's coupled weights, computed by the server
    layers: dict[str, float] = field(default_factory=dict)  # per-layer ratio, by module name (e.g. features.0: 0.5)
    ignore: list[str] = field(default_factory=list)  # module-name patterns never pruned (the last layer never is)


@dataclass
class ShapeConfig:
    """Model shaping (``conf/shape/*.yaml``; :mod:`fedge.conf.shaping`)."""

    name: str = "none"
    init: InitSchema = field(default_factory=InitSchema)
    lowrank: LowRankSchema = field(default_factory=LowRankSchema)
    prune: PruneSchema = field(default_factory=PruneSchema)
    distill: DistillSchema = field(default_factory=DistillSchema)
    structured: StructuredSchema = field(default_factory=StructuredSchema)


@dataclass
class TensorBoardSchema:
    """``logger.tensorboard`` (``logger=tensorboard``; :mod:`fedge.server.dashboards`)."""

    enabled: bool = False
    dir: str = "tensorboard"  # event files, relative to the run's output directory


@dataclass
class MlflowSchema:
    """``logger.mlflow`` (``logger=mlflow``; :mod:`fedge.server.dashboards`)."""

    enabled: bool = False
    tracking_uri: str = ""  # "" = MLflow's file store in <output dir>/mlruns; a path = a file store there; else a URI
    experiment: str = "fedge"  # the MLflow experiment (created if missing)
    run_name: str = ""  # "" = the output directory's name


@dataclass
class LoggerConfig:
    """Dashboards (``conf/logger/*.yaml``): none by default; ``logger=[tensorboard,mlflow]`` for both."""

    tensorboard: TensorBoardSchema = field(default_factory=TensorBoardSchema)
    mlflow: MlflowSchema = field(default_factory=MlflowSchema)


@dataclass
class FedgeConfig:
    """The whole experiment."""

    task: Any = MISSING  # {_target_: a fedge.tasks.FederatedTask subclass, ...}
    strategy: Any = MISSING  # {_target_: a flwr.serverapp.strategy.Strategy, ...}
    partition: Any = MISSING  # {_target_: a flwr_datasets Partitioner, ...}
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    client: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    server: ServerConfig = field(default_factory=ServerConfig)  # gRPC server: fedge-server, backend=grpc
    device: DeviceConfig = field(default_factory=DeviceConfig)  # simulated device profiles and mix
    secagg: SecAggConfig = field(default_factory=SecAggConfig)  # secure aggregation (secagg=on)
    shape: ShapeConfig = field(default_factory=ShapeConfig)  # model shaping: init, lowrank, prune, distill
    mode: ModeConfig = field(default_factory=ModeConfig)  # sync rounds or async buffered aggregation (mode=async)
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # dashboards: TensorBoard, MLflow (logger=...)
    attack: AttackConfig = field(default_factory=AttackConfig)  # simulated attackers (attack=signflip, ...)
    dp_delta: float = 1e-5  # delta at which DP runs report epsilon each round
    num_clients: int = 10
    rounds: int = 20
    seed: int = 0
    progress: bool = True  # rich progress bar and summary table
    verbose: bool = False  # Flower's own INFO logs
    # fedge-sim sync rounds: central evaluation after every N-th round (round 0 and the last
    # round always); the rounds between record accuracy/loss null. 1 = every round. Raise it
    # when only the end matters and the test set is large (benchmark grids): it changes no weights.
    eval_every: int = 1


def register_configs() -> None:
    """Register the schema (``defaults: [fedge_schema]``) and ``task_base/open_args`` with Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=FedgeConfig)
    # Hydra closes the whole composed tree (struct mode) before applying overrides; a node
    # whose own struct flag is False stays open, and YAML cannot set that flag.
    open_args = OmegaConf.create({"args": {}})
    OmegaConf.set_struct(open_args.args, False)
    store.store(group=OPEN_ARGS[0], name=OPEN_ARGS[1], node=open_args)

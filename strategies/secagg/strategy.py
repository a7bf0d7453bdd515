"""SecAggStrategy: a Flower strategy whose training updates are securely aggregated.

The wrapper sits around a :class:`~fedge.strategies.CompressedStrategy` (which encodes the
broadcast and decodes the one aggregate) and runs SecAgg+ through the same Grid Flower
hands ``configure_train``:

* ``configure_train``: the inner strategy samples the round's devices and builds their
  train messages; the wrapper then runs the key-advertisement and share stages (query
  messages whose config holds a serialised ``SecAggRequest`` under ``fedge.secagg``) and
  adds to each train message the share bundle of its device; devices left out (did not
  answer, bad reply, too few neighbours) get no train message;
* ``aggregate_train``: the masked inputs arrive in the train replies; the wrapper runs
  the unmask stage, takes the exact sum of the survivors' integer vectors
  (:class:`~fedge.strategies.secagg.state.SecAggServerRound`), de-quantises it to the
  survivors' example-weighted mean update and hands the inner strategy ONE reply carrying
  that mean (as a lossless delta) with the survivors' total ``num-examples`` and their
  weighted-mean metrics. FedAvg-family strategies (FedAvg, FedProx, FedAvgM, FedAdam,
  FedYogi, FedAdagrad) and client-side fixed-clipping DP then do what they would do with
  the individual updates' weighted mean; strategies that need individual updates are
  refused (:mod:`.refusals`).

A round with fewer than ``t`` devices left at any stage, or a secret that cannot be
rebuilt from ``t`` valid shares, is abandoned: ``aggregate_train`` returns ``(None,
None)``, so the model stays, and the reason is in :attr:`SecAggStrategy.rounds`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedge.protos import records
from fedge.protos.codecs import CodecSpec, encode_update
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.frozen_tensors import frozen_names
from fedge.protos.secagg import REQUEST_KEY
from fedge.protos.secagg.graph import DEFAULT_DROPOUT
from fedge.protos.secagg.params import float_layout, layout_digest, make_setup
from fedge.protos.v1 import secagg_pb2 as pb
from fedge.protos.v1 import tensor_pb2
from fedge.strategies.compressed import CompressedStrategy
from fedge.strategies.secagg.refusals import refuse_individual_update_strategies
from fedge.strategies.secagg.state import Answers, RoundOutcome, SecAggServerRound, ServerStage

log = logging.getLogger(__name__)

#: Record of a device's stage reply in a reply Message (a ConfigRecord, key ``payload``).
SECAGG_RECORD = records.SECAGG_RECORD
_NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class SecAggSettings:
    """Secure-aggregation knobs (the ``secagg`` config group).

    value_bits: bits per quantised coordinate (the ring adds ``ceil(log2 n)``).
    clip: coordinates are clipped to ``[-clip, clip]`` (update units) before quantising.
    neighbours: ``k`` of the neighbour graph; 0 = the smallest even ``k`` that loses a
        ``dropout`` share of devices with a round lost at most once in 1,000 (grows with log n;
        :func:`fedge.protos.secagg.graph.neighbour_count` has the numbers and the tuning advice).
    threshold: ``t``; 0 = ``k // 2 + 1`` (the smallest safe value).
    dropout: share of a round's devices the default ``k`` is sized to lose (0.3; below 0.5).
    sparse_ratio: share of coordinates every device sends (same random-k for all); 0 = dense.
    max_examples: a device with this many examples has weight 1 (FedAvg weighting); 0 = equal weights.
    error_feedback: devices carry what they did not send to the next round (off for DP).
    stage_timeout_s: the Grid's timeout for each key/share/unmask stage.
    """

    value_bits: int = 8
    clip: float = 0.2
    neighbours: int = 0
    threshold: int = 0
    dropout: float = DEFAULT_DROPOUT
    sparse_ratio: float = 0.0
    max_examples: float = 0.0
    error_feedback: bool = False
    stage_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparse_ratio <= 1.0:
            raise ValueError(f"secagg.sparse_ratio must be in [0, 1], got {self.sparse_ratio}")
        if not 0.0 <= self.dropout < 0.5:
            raise ValueError(f"secagg.dropout must be in [0, 0.5) (t must stay above k / 2), got {self.dropout}")
        if self.max_examples < 0:
            raise ValueError(f"secagg.max_examples must be >= 0, got {self.max_examples}")


@dataclass
class SecAggRoundRecord:
    """What happened in one securely aggregated round (for results.json)."""

    round: int
    sampled: int
    neighbours: int
    threshold: int
    modulus: int  # masked values are integers modulo this (participants * levels + 1)
    vector_length: int  # masked coordinates (sent update coordinates + 1 weight)
    outcome: RoundOutcome = field(default_factory=RoundOutcome)  # who took part at each stage
    dropped: list[dict] = field(default_factory=list)  # {node_id, stage, reason}
    abandoned: str | None = None


class SecAggStrategy(Strategy):
    """Run ``strategy``'s training rounds under SecAgg+ (see the module docstring)."""

    def __init__(
        self,
        strategy: CompressedStrategy,
        settings: SecAggSettings | None = None,
        freeze: Sequence[str] = (),
        trainable: Sequence[str] = (),
    ) -> None:
        refuse_individual_update_strategies(strategy)
        self.strategy = strategy
        self.settings = settings or SecAggSettings()
        self.freeze, self.trainable = list(freeze), list(trainable)
        self.log = strategy.log  # the run's dropped-reply log (run_federation reads it)
        self.rounds: list[SecAggRoundRecord] = []
        self._grid: Grid | None = None
        self._server: SecAggServerRound | None = None
        self._instructions: dict[int, Message] = {}
        self._layout: list[tuple[str, tuple[int, ...]]] = []
        self._model: dict[str, np.ndarray] = {}

    # -- what the transport needs of the wrapped CompressedStrategy ----------------------
    @property
    def uplink(self) -> UplinkPlan:
        """The inner strategy's uplink plan (a gRPC server sizes train answers with it)."""
        return self.strategy.uplink

    @property
    def downlink(self) -> CodecSpec:
        """The inner strategy's broadcast codec."""
        return self.strategy.downlink

    @property
    def max_update_bytes(self) -> int:
        """Largest reply the inner strategy decodes (stage replies are held to it too)."""
        return self.strategy.max_update_bytes

    @property
    def current_round(self) -> SecAggServerRound | None:
        """The server's state of the latest round (its ``total`` once unmasked), or None."""
        return self._server

    def results_section(self) -> list[dict]:
        """Every round's :class:`SecAggRoundRecord` as plain data (``results.json["secagg"]``)."""
        return [asdict(r) for r in self.rounds]

    # -- configure: keys and shares, then the train messages ----------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._grid, self._server, self._instructions = grid, None, {}
        if not messages:
            return messages
        model = {k: v.numpy() for k, v in arrays.items()}
        frozen = frozen_names(model, self.freeze, self.trainable) if (self.freeze or self.trainable) else set()
        self._model = {k: v for k, v in model.items() if k not in frozen}
        self._layout = float_layout(self._model)
        length = sum(math.prod(shape) for _, shape in self._layout)
        s = self.settings
        kept = max(1, math.ceil(s.sparse_ratio * length)) if s.sparse_ratio else 0
        participants = sorted({m.metadata.dst_node_id for m in messages})
        setup = make_setup(
            server_round, participants, length, layout_digest(self._layout), s.value_bits, s.clip,
            s.neighbours, s.threshold, kept if kept < length else 0, s.max_examples, s.dropout,
        )
        setup.error_feedback = s.error_feedback
        server = self._server = SecAggServerRound(setup)
        self.rounds.append(
            SecAggRoundRecord(server_round, len(participants), setup.neighbours, setup.threshold, setup.modulus, server.plan.length)
        )
        request = server.setup_request()
        rosters = server.receive_keys(self._exchange(server_round, {n: request for n in participants}))
        bundles = server.receive_shares(self._exchange(server_round, rosters)) if rosters else {}
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in bundles:
                _attach(message, bundles[node])
                self._instructions[node] = message
                out.append(message)
        self._note(server)
        return out

    # -- aggregate: unmask, then one reply for the inner strategy -------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server = self._server
        if server is None or server.round != server_round:
            raise RuntimeError(f"aggregate_train for round {server_round} before configure_train")
        replies = list(replies)
        if server.stage is not ServerStage.MASKED:  # abandoned while sharing keys
            return self._abandon(server)
        metrics = {}
        answers: dict[int, pb.SecAggReply | str] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            answers[node] = self._stage_reply(reply)
            if not isinstance(answers[node], str) and reply.content.metric_records:
                metrics[node] = next(iter(reply.content.metric_records.values()))
        requests = server.receive_masked(answers)
        total = server.receive_unmask(self._exchange(server_round, requests)) if requests else None
        if total is None:
            return self._abandon(server)
        mean, _ = server.mean_update()
        survivors = server.survivors
        self._note(server)
        reply = self._aggregate_reply(server_round, mean, [metrics[n] for n in survivors if n in metrics], survivors[0])
        self._model = {}  # only needed to shape the mean (and not worth a checkpoint)
        return self.strategy.aggregate_train(server_round, [reply])

    def _aggregate_reply(self, server_round: int, mean: np.ndarray, metrics: list[MetricRecord], node: int) -> Message:
        """One reply, as from one device, whose update is the survivors' mean."""
        delta: dict[str, np.ndarray] = {}
        offset = 0
        floats = dict(self._layout)
        for name, value in self._model.items():
            if name in floats:
                size = value.size
                delta[name] = mean[offset : offset + size].reshape(value.shape).astype(value.dtype)
                offset += size
            else:  # integer state (counters) is not aggregated: unchanged
                delta[name] = np.zeros_like(value)
        update = encode_update(delta, "fp32", tensor_pb2.UPDATE_KIND_DELTA, base_round=server_round - 1)
        if metrics:
            merged = aggregate_metricrecords([RecordDict({"m": m}) for m in metrics], _NUM_EXAMPLES)
            merged[_NUM_EXAMPLES] = sum(_number(m.get(_NUM_EXAMPLES, 0.0)) for m in metrics)
        else:
            merged = MetricRecord({_NUM_EXAMPLES: 1.0})
        content = RecordDict(
            {
                records.UPDATE_RECORD: ConfigRecord({records.PAYLOAD: update.SerializeToString()}),
                records.METRICS_RECORD: merged,
            }
        )
        return Message(content, reply_to=self._instructions[node])

    # -- stages through the Grid -----------------------------------------------------------
    def _exchange(self, server_round: int, requests: dict[int, pb.SecAggRequest]) -> Answers:
        """Send each node its request as a query message; its reply, or why none came."""
        grid = self._grid
        if grid is None or not requests:
            return {}
        messages = []
        for node, request in requests.items():
            config = ConfigRecord({"server-round": server_round, REQUEST_KEY: request.SerializeToString()})
            content = RecordDict({"arrays": ArrayRecord(), records.CONFIG_RECORD: config})
            messages.append(grid.create_message(content, MessageType.QUERY, node, str(server_round)))
        answers: dict[int, pb.SecAggReply | str] = {}
        for reply in grid.send_and_receive(messages, timeout=self.settings.stage_timeout_s):
            answers[reply.metadata.src_node_id] = self._stage_reply(reply)
        return answers

    def _stage_reply(self, reply: Message) -> pb.SecAggReply | str:
        """The SecAggReply a device sent, or why there is none."""
        if reply.has_error():
            return f"no reply: {reply.error.reason}"
        record = reply.content.config_records.get(SECAGG_RECORD)
        payload = record.get(records.PAYLOAD) if record is not None else None
        if not isinstance(payload, bytes):
            return "reply carries no fedge.secagg payload"
        if len(payload) > self.strategy.max_update_bytes:
            return f"secagg reply of {len(payload)} bytes exceeds {self.strategy.max_update_bytes}"
        try:
            return pb.SecAggReply.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            return f"secagg reply does not parse: {exc}"

    def _note(self, server: SecAggServerRound) -> None:
        record = self.rounds[-1]
        record.outcome = replace(server.outcome)
        record.dropped = [asdict(d) for d in server.dropped]
        record.abandoned = server.abandoned

    def _abandon(self, server: SecAggServerRound) -> tuple[None, None]:
        self._note(server)
        log.warning("%s; the model stays", server.abandoned)
        return None, None

    # -- delegation -----------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.debug("SecAggStrategy: %s, wrapping:", self.settings)
        self.strategy.summary()


def _attach(message: Message, request: pb.SecAggRequest) -> None:
    """Put the device's share bundle into its train message's config (a copy per message)."""
    content = message.content
    config = ConfigRecord(dict(content.config_records.get(records.CONFIG_RECORD, ConfigRecord())))
    config[REQUEST_KEY] = request.SerializeToString()
    new = RecordDict({k: v for k, v in content.items() if k != records.CONFIG_RECORD})
    new[records.CONFIG_RECORD] = config
    message.content = new


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0

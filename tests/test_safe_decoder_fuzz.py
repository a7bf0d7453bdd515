"""Malformed payloads through the decoder and through CompressedStrategy (must-show 5).

Each hypothesis example builds a valid compressed update, breaks it in one of many
ways, and checks: the decoder raises a CodecError naming the problem (never another
exception), and CompressedStrategy drops the reply with a reason while the other
replies are aggregated exactly as if the bad one had never been sent.
"""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedge.protos import records
from fedge.protos.codecs import CodecError, CodecSpec, decode_update, encode_update, parse_update
from fedge.protos.v1 import tensor_pb2
from fedge.server.identity import ensure_task_identity
from fedge.server.message_translation import with_message_id
from fedge.strategies import CompressedStrategy

REFERENCE = {
    "conv.weight": np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32),
    "conv.bias": np.zeros(4, np.float32),
    "fc.weight": np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32),
    "steps": np.array(3, dtype=np.int64),
}
SPECS = [
    CodecSpec("fp32"),
    CodecSpec("fp16"),
    CodecSpec("q8"),
    CodecSpec("uniform", {"bits": 4, "per_channel": True}),
    CodecSpec("topk", {"ratio": 0.1, "values": "q8"}),
    CodecSpec("topk", {"ratio": 0.05, "values": "q8", "scope": "global"}),
    CodecSpec("randk", {"ratio": 0.2}),
    CodecSpec("sign"),
    CodecSpec("kmeans", {"bits": 2}),
    CodecSpec("powersgd", {"rank": 1}),
]
MAX_BYTES = 20_000


def valid_delta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in REFERENCE.items() if v.dtype.kind == "f"}
    out["steps"] = np.array(1, dtype=np.int64)
    return out


def _tensor_with_payload(update):
    """A (tensor, its byte-carrying leaf) pair to corrupt."""
    for tensor in update.tensors:
        leaves = [tensor, *tensor.parts, *(q for p in tensor.parts for q in p.parts)]
        for leaf in leaves:
            if leaf.data:
                return tensor, leaf
    raise AssertionError("no payload")


def corrupt(update: tensor_pb2.CompressedUpdate, how: int, data) -> bytes:
    """Serialised bytes of ``update`` broken in way ``how`` (each way is always invalid)."""
    tensor, leaf = _tensor_with_payload(update)
    if how == 0:  # truncated payload
        cut = data.draw(st.integers(1, len(leaf.data)))
        leaf.data = leaf.data[:-cut]
    elif how == 1:  # extra payload bytes
        leaf.data = leaf.data + data.draw(st.binary(min_size=1, max_size=9))
    elif how == 2:  # shape differs from the model
        tensor.shape[0] = tensor.shape[0] + data.draw(st.integers(1, 5))
    elif how == 3:  # unknown codec
        tensor.codec = data.draw(st.text(min_size=1, max_size=8).filter(lambda s: s not in {s.name for s in SPECS} | {"q8", "uniform", "fp32", "fp16"}))
    elif how == 4:  # dtype differs
        tensor.dtype = data.draw(st.sampled_from([tensor_pb2.DTYPE_FLOAT64, tensor_pb2.DTYPE_INT8, 99]))
    elif how == 5:  # missing tensor
        del update.tensors[data.draw(st.integers(0, len(update.tensors) - 1))]
    elif how == 6:  # duplicated tensor
        update.tensors.append(update.tensors[0])
    elif how == 7:  # NaN / Inf in an fp32 payload
        update.tensors[0].CopyFrom(
            encode_update({update.tensors[0].name: np.full(REFERENCE[update.tensors[0].name].shape, np.nan, np.float32)}, "fp32").tensors[0]
        )
        if data.draw(st.booleans()):
            update.tensors[0].data = np.full(REFERENCE["conv.weight"].shape, np.inf, "<f4").tobytes()
    elif how == 8:  # wrong kind
        update.kind = tensor_pb2.UPDATE_KIND_WEIGHTS
    elif how == 9:  # oversize
        update.tensors[0].name = update.tensors[0].name  # keep valid, pad below
        return update.SerializeToString() + b"\x0a" + bytes([0x80, 0x80, 0x02]) + b"\x00" * (MAX_BYTES)
    elif how == 10:  # garbage that is not a protobuf
        return b"\xff" + data.draw(st.binary(min_size=1, max_size=64))
    elif how == 11:  # parameter vectors of the wrong length
        target = tensor if tensor.codec != "fp32" and tensor.codec != "fp16" else leaf
        target.ints.append(data.draw(st.integers(-5, 5)))
        if target.codec in ("fp32", "fp16"):
            target.codec = "q8"
    elif how == 12:  # negative dimension
        tensor.shape[-1] = -data.draw(st.integers(1, 9))
    elif how == 13:  # wrong base round
        update.base_round = data.draw(st.integers(1, 1000))
    return update.SerializeToString()


def reply_message(payload: bytes, node_id: int, instruction_ids: dict[int, Message]) -> Message:
    instruction = instruction_ids[node_id]
    content = RecordDict(
        {
            records.UPDATE_RECORD: ConfigRecord({records.PAYLOAD: payload}),
            records.METRICS_RECORD: MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content, reply_to=instruction)


def instructions() -> dict[int, Message]:
    ensure_task_identity()
    out = {}
    for node in (1001, 1002, 1003):
        out[node] = with_message_id(Message(RecordDict({"c": ConfigRecord()}), node, "train"), f"m{node}")
    return out


def aggregate(strategy: CompressedStrategy, payloads: dict[int, bytes]) -> ArrayRecord:
    strategy._reference = {1: REFERENCE}
    msgs = instructions()
    replies = [reply_message(p, n, msgs) for n, p in payloads.items()]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


@settings(max_examples=1200, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec_index=st.integers(0, len(SPECS) - 1), how=st.integers(0, 13), seed=st.integers(0, 2**16), data=st.data())
def test_malformed_payloads_are_refused_by_decoder_and_strategy(spec_index, how, seed, data):
    spec = SPECS[spec_index]
    update = encode_update(valid_delta(seed), spec, tensor_pb2.UPDATE_KIND_DELTA, base_round=0)
    bad = corrupt(update, how, data)

    # 1. the decoder: a typed CodecError with a reason, nothing else
    try:
        parsed = parse_update(bad, max_bytes=MAX_BYTES)
        if parsed.base_round != 0:
            raise CodecError(f"base round {parsed.base_round}")
        decode_update(parsed, REFERENCE, expected_kind=tensor_pb2.UPDATE_KIND_DELTA)
    except CodecError as exc:
        assert str(exc)
    else:
        raise AssertionError(f"mutation {how} of {spec.name} was accepted")

    # 2. the strategy: the bad reply is dropped with a reason; the good ones aggregate as if alone
    good = {n: encode_update(valid_delta(seed + n), spec, base_round=0).SerializeToString() for n in (1001, 1002)}
    strategy = CompressedStrategy(FedAvg(), uplink=spec, max_update_bytes=MAX_BYTES)
    with_bad = aggregate(strategy, {**good, 1003: bad})
    assert len(strategy.log.dropped) == 1 and strategy.log.dropped[0].node_id == 1003
    assert strategy.log.dropped[0].reason
    clean = aggregate(CompressedStrategy(FedAvg(), uplink=spec, max_update_bytes=MAX_BYTES), good)
    for name in REFERENCE:
        assert np.array_equal(with_bad[name].numpy(), clean[name].numpy()), name
    assert np.array_equal(REFERENCE["conv.weight"], np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32))


def test_only_bad_replies_leave_the_model_untouched():
    strategy = CompressedStrategy(FedAvg())
    arrays = aggregate(strategy, {1001: b"\x00garbage", 1002: b""})
    assert arrays is None and len(strategy.log.dropped) == 2

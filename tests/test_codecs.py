"""The codec suite: round trips, unbiasedness, index-coding bound, error feedback."""

import numpy as np
import pytest

from fedge.client.uplink import UplinkEncoder
from fedge.protos.codecs import CodecSpec, UnknownCodecError, decode_update, encode_update, make_codec
from fedge.protos.codecs.index_coding import decode_indices, encode_indices, log2_binomial
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.codecs.sparse import top_k_indices
from fedge.protos.v1 import tensor_pb2

SPECS = [
    CodecSpec("fp32"),
    CodecSpec("fp16"),
    CodecSpec("q8"),
    CodecSpec("q4s"),
    CodecSpec("q1"),
    CodecSpec("uniform", {"bits": 6, "per_channel": True}),
    CodecSpec("topk", {"ratio": 0.05, "values": "q8"}),
    CodecSpec("topk", {"ratio": 0.6, "values": "fp16"}),
    CodecSpec("topk", {"ratio": 0.05, "values": "q8", "scope": "global"}),
    CodecSpec("randk", {"ratio": 0.1, "values": "fp32", "unbiased": True}),
    CodecSpec("sign"),
    CodecSpec("kmeans", {"bits": 3}),
    CodecSpec("powersgd", {"rank": 2}),
]


def roundtrip(codec, x, state=None):
    wire = tensor_pb2.CompressedTensor.FromString(codec.encode(x, "t", state).SerializeToString())
    return codec.decode(wire)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.name}{dict(s.params)}")
@pytest.mark.parametrize("shape", [(64, 40), (16, 3, 3, 3), (1000,), (1,), (0, 5)])
def test_every_codec_keeps_shape_and_dtype(spec, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    codec = make_codec(spec)
    if not codec.supports(x):
        # Only low-rank refuses (1-D or too small); whole updates then use the fallback codec.
        assert spec.name == "powersgd"
        (tensor,) = encode_update({"t": x}, spec, fallback="fp16").tensors
        assert tensor.codec == "fp16"
        return
    y = roundtrip(codec, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.isfinite(y))


def test_lossy_codecs_are_accurate_to_their_bits():
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    step = (x.max() - x.min()) / 255
    assert np.abs(roundtrip(make_codec("q8"), x) - x).max() <= step / 2 + 1e-6
    # per-channel scales beat a single scale when channels differ in range
    y = x.reshape(100, 100) * np.logspace(-3, 0, 100, dtype=np.float32)[:, None]
    per_tensor = np.abs(roundtrip(make_codec("q8"), y) - y).mean()
    per_channel = np.abs(roundtrip(make_codec(CodecSpec("uniform", {"bits": 8, "per_channel": True})), y) - y).mean()
    assert per_channel < per_tensor / 3


def test_values_on_the_grid_round_trip_exactly():
    levels = np.linspace(-1, 1, 256, dtype=np.float32)
    x = np.random.default_rng(2).choice(levels, size=5000).astype(np.float32)
    x[:2] = [-1, 1]
    np.testing.assert_allclose(roundtrip(make_codec("q8"), x), x, atol=1e-6)
    codebook = np.array([-0.5, 0.0, 0.25, 2.0], dtype=np.float32)
    z = np.random.default_rng(3).choice(codebook, size=3000)
    assert np.array_equal(roundtrip(make_codec(CodecSpec("kmeans", {"bits": 2})), z), z)


def test_topk_keeps_exactly_the_largest_entries():
    x = np.random.default_rng(4).standard_normal(10_000).astype(np.float32)
    y = roundtrip(make_codec(CodecSpec("topk", {"ratio": 0.01})), x)
    kept = np.flatnonzero(y)
    assert kept.size == 100
    assert np.array_equal(y[kept], x[kept])
    assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-100]


def test_global_topk_keeps_the_largest_entries_across_tensors():
    rng = np.random.default_rng(11)
    arrays = {
        "big": rng.standard_normal((100, 100)).astype(np.float32),  # 10,000 small entries
        "loud": (20 * rng.standard_normal(300)).astype(np.float32),  # few, large entries
        "quiet": (1e-3 * rng.standard_normal(500)).astype(np.float32),
        "bias": np.zeros(8, np.float32),
    }
    spec = CodecSpec("topk", {"ratio": 0.01, "values": "fp32", "scope": "global"})
    wire = tensor_pb2.CompressedUpdate.FromString(encode_update(arrays, spec).SerializeToString())
    out = decode_update(wire, arrays)
    total = sum(a.size for a in arrays.values())
    k = int(np.ceil(0.01 * total))
    kept = {name: np.flatnonzero(out[name].ravel()) for name in arrays}
    assert sum(v.size for v in kept.values()) == k  # the budget is the whole update's, not each tensor's
    everything = np.concatenate([np.abs(a.ravel()) for a in arrays.values()])
    threshold = np.sort(everything)[-k]
    for name, idx in kept.items():
        assert np.array_equal(out[name].ravel()[idx], arrays[name].ravel()[idx])  # values as they were
        assert np.all(np.abs(arrays[name].ravel()[idx]) >= threshold)
    assert kept["quiet"].size == 0 and kept["bias"].size == 0  # per-tensor top-k would send one of each
    assert kept["loud"].size > 0.01 * 300
    # each tensor still decodes on its own as an ordinary top-k tensor
    assert {t.codec for t in wire.tensors} == {"topk"}


def test_global_topk_tensors_with_nothing_kept_cost_only_their_header():
    arrays = {"w": np.arange(1, 10_001, dtype=np.float32), "b": np.ones(5_000, np.float32)}
    wire = encode_update(arrays, CodecSpec("topk", {"ratio": 0.001, "values": "q8", "scope": "global"}))
    empty = next(t for t in wire.tensors if t.name == "b")
    assert empty.parts[0].shape == [0] and empty.ByteSize() < 100  # headers only: no 625-byte bitmap for an empty set
    assert np.count_nonzero(decode_update(wire, arrays)["b"]) == 0


def test_topk_scope_is_checked():
    with pytest.raises(UnknownCodecError, match="scope"):
        make_codec(CodecSpec("topk", {"scope": "layer"}))


def test_powersgd_warm_start_improves_over_rounds():
    rng = np.random.default_rng(5)
    low_rank = (rng.standard_normal((60, 2)) @ rng.standard_normal((2, 80))).astype(np.float32)
    x = low_rank + 0.01 * rng.standard_normal((60, 80)).astype(np.float32)
    codec, state = make_codec(CodecSpec("powersgd", {"rank": 2})), {}
    errors = [np.linalg.norm(roundtrip(codec, x, state) - x) for _ in range(3)]
    assert errors[-1] < errors[0] and errors[-1] < 0.05 * np.linalg.norm(x)


@pytest.mark.parametrize(
    "spec",
    [CodecSpec("q4s"), CodecSpec("q2s"), CodecSpec("randk", {"ratio": 0.2, "unbiased": True})],
    ids=lambda s: s.name + str(dict(s.params)),
)
def test_stochastic_codecs_are_unbiased(spec):
    """Mean of N independent encodings -> x: every element within 5 standard errors
    (plus float32 rounding of the decode arithmetic, 1e-5 of the value range)."""
    x = np.random.default_rng(6).standard_normal(200).astype(np.float32)
    n = 4000
    samples = np.stack([roundtrip(make_codec(CodecSpec(spec.name, {**spec.params, "seed": i})), x) for i in range(n)])
    samples = samples.astype(np.float64)  # float32 accumulation over N samples would drift
    mean, std = samples.mean(axis=0), samples.std(axis=0)
    rounding = 1e-5 * float(x.max() - x.min())
    excess = np.abs(mean - x) - 5.0 * std / np.sqrt(n) - rounding
    assert excess.max() <= 0, f"element {excess.argmax()} off by {excess.max():.2e} beyond tolerance"


def test_deterministic_rounding_is_biased_which_the_unbiasedness_test_would_catch():
    x = np.full(200, 0.3, dtype=np.float32)
    x[0], x[1] = 0.0, 1.0
    step = 1 / 3  # 2 bits: levels 0, 1/3, 2/3, 1
    y = roundtrip(make_codec("q2"), x)
    assert abs(y[2:].mean() - 0.3) > step / 20


@pytest.mark.parametrize("density", [0.0005, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.99])
def test_index_coding_is_within_ten_percent_of_the_floor(density):
    d = 200_000
    k = int(d * density)
    idx = np.sort(np.random.default_rng(7).choice(d, size=k, replace=False))
    part = encode_indices(idx, d)
    assert np.array_equal(decode_indices(tensor_pb2.CompressedTensor.FromString(part.SerializeToString())), idx)
    assert 8 * len(part.data) <= 1.10 * log2_binomial(d, k)


def test_index_coding_bound_on_real_topk_sets_from_training():
    """Top-1% positions of real training deltas (digits CNN) are clustered, not random."""
    from bench.training_delta import digits_training_delta

    checked = 0
    for name, tensor_delta in digits_training_delta(examples=400).items():
        delta = tensor_delta.ravel()
        if delta.size < 1000:
            continue
        k = max(1, delta.size // 100)
        idx = top_k_indices(delta, k)
        part = encode_indices(idx, delta.size)
        assert 8 * len(part.data) <= 1.10 * log2_binomial(delta.size, k), name
        checked += 1
    assert checked >= 2


def test_error_feedback_delays_but_never_loses_the_update():
    rng = np.random.default_rng(8)
    encoder = UplinkEncoder()
    plan = UplinkPlan(CodecSpec("topk", {"ratio": 0.01, "values": "fp32"}), error_feedback=True)
    total_delta = np.zeros((50, 40), np.float32)
    total_sent = np.zeros((50, 40), np.float32)
    for r in range(20):
        delta = {"w": rng.standard_normal((50, 40)).astype(np.float32)}
        sent = decode_update(encoder.encode(delta, plan, base_round=r))["w"]
        total_delta += delta["w"]
        total_sent += sent
    np.testing.assert_allclose(total_sent + encoder.residual["w"], total_delta, atol=1e-4)
    # without error feedback the untransmitted part is gone
    encoder = UplinkEncoder()
    encoder.encode({"w": total_delta}, UplinkPlan(plan.codec, error_feedback=False), 0)
    assert encoder.residual == {}

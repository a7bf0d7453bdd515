"""The fast codec paths write the same bytes and decode the same values as the plain ones.

Each fast path (single-selection global top-k, torch's float16 casts, the fused 8-bit
quantiser) is compared with the straightforward implementation it replaced
(``bench/codec_baselines.py``), on random updates (several seeds, shapes on both sides of the block size,
values spanning fp16's subnormal and overflow ranges).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (loaded: the float16 casts take torch's path)

from bench import codec_baselines as baselines
from fedge.protos.codecs import CodecSpec, encode_update, make_codec
from fedge.protos.codecs import half
from fedge.protos.codecs.quantize import BLOCK, ROUNDER
from fedge.protos.codecs.sparse import SAMPLE, global_top_k_positions, top_k_indices
from fedge.protos.v1 import tensor_pb2

SHAPES = {"conv": (32, 16, 3, 3), "fc": (300, 700), "big": (3 * BLOCK + 17,), "bias": (300,)}


def _update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, -1)).astype(np.float32) for name, shape in SHAPES.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("values", ["fp32", "q8", "fp16"])
def test_global_topk_selects_once_and_writes_the_old_bytes(seed, values):
    arrays = _update(seed)
    new = encode_update(arrays, CodecSpec("topk", {"ratio": 0.01, "values": values, "scope": "global"}))
    assert new.SerializeToString() == baselines.global_topk_update(arrays, 0.01, values).SerializeToString()


def test_global_topk_ties_fill_the_budget_exactly():
    arrays = {"a": np.zeros(1000, np.float32), "b": np.zeros(500, np.float32)}
    arrays["a"][[3, 900]] = [5.0, -4.0]
    arrays["b"][7] = 4.5
    positions = global_top_k_positions(arrays, 10)  # 3 nonzero, 7 zeros tied at the threshold
    assert sum(p.size for p in positions.values()) == 10
    assert {3, 900} <= set(positions["a"].tolist()) and 7 in positions["b"]
    assert positions["a"][:3].tolist() == [0, 1, 2]  # ties taken in order of position
    for p in positions.values():
        assert np.all(np.diff(p) > 0) and p.dtype == np.int64


def test_global_topk_positions_are_each_tensors_largest():
    arrays = _update(5)
    positions = global_top_k_positions(arrays, 5_000)
    for name, p in positions.items():
        assert np.array_equal(p, top_k_indices(arrays[name].ravel(), p.size))


def test_global_topk_rescans_when_the_sample_guesses_too_high():
    rng = np.random.default_rng(6)
    x = rng.uniform(0.0, 1.0, 300_000).astype(np.float32)  # distinct small magnitudes
    stride = x.size // SAMPLE
    x[::stride] = 10.0 + np.arange(x[::stride].size, dtype=np.float32)  # every sampled point is large
    k = x[::stride].size + 20_000  # more than the sample's large ones: the first guess finds too few
    positions = global_top_k_positions({"a": x[:123_456], "b": x[123_456:]}, k)
    chosen = np.concatenate([positions["a"], positions["b"] + 123_456])
    assert np.array_equal(chosen, np.sort(np.argpartition(x, x.size - k)[x.size - k :]))


def _fp16_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    wide = (rng.standard_normal(50_000) * np.exp(rng.uniform(-25, 12, 50_000))).astype(np.float32)  # subnormal..overflow
    wide[:8] = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 6e-8, -2.9e-8]
    with_nan = wide.copy()
    with_nan[100] = np.nan
    read_only = np.frombuffer(wide.tobytes(), dtype=np.float32)  # bytes off the wire
    return [
        wide,
        with_nan,
        rng.standard_normal((64, 128)).astype(np.float32) * 1e-3,
        np.ones(10, np.float32),
        wide[::3],  # strided
        read_only,
        wide[:2000],  # between the blocked integer cast's and torch's thresholds
        wide[:3000].astype(np.float64),  # not float32: numpy's cast
    ]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize("torch_loaded", [True, False])
def test_fp16_casts_match_numpy_bit_for_bit(monkeypatch, torch_loaded):
    if not torch_loaded:
        monkeypatch.setattr(half, "loaded_torch", lambda: None)
    codec = make_codec("fp16")
    for x in _fp16_inputs():
        msg = codec.encode(x, "t")
        assert msg.data == baselines.fp16_encode(x)
        wire = tensor_pb2.CompressedTensor.FromString(msg.SerializeToString())
        assert np.array_equal(codec.decode(wire), baselines.fp16_decode(wire.data, x.shape), equal_nan=True)


def _numpy_only(monkeypatch: pytest.MonkeyPatch, torch_loaded: bool) -> None:
    """Make the codecs run as in a process without torch (the numpy device runtime)."""
    if not torch_loaded:
        monkeypatch.setattr(half, "loaded_torch", lambda: None)


@pytest.mark.parametrize("shape", [(4 * BLOCK + 5,), (3, 2 * BLOCK + 1), (64, 40), (0,), (1,), (3,)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("torch_loaded", [True, False])
def test_fused_q8_writes_and_decodes_as_the_plain_passes(monkeypatch, shape, per_channel, torch_loaded):
    _numpy_only(monkeypatch, torch_loaded)
    x = (np.random.default_rng(4).standard_normal(shape) * 1e-2).astype(np.float32)
    codec = make_codec(CodecSpec("q8", {"per_channel": per_channel}))
    msg = codec.encode(x, "t")
    old_bytes, lo, scale = baselines.uniform_encode(x, 8, per_channel)
    assert msg.data == old_bytes
    decoded = codec.decode(tensor_pb2.CompressedTensor.FromString(msg.SerializeToString()))
    assert np.array_equal(decoded, baselines.uniform_decode(old_bytes, lo, scale, x.shape))


@pytest.mark.parametrize(
    "spec",
    [
        CodecSpec("topk", {"ratio": 0.01, "values": "q8", "scope": "global"}),
        CodecSpec("topk", {"ratio": 0.05, "values": "fp16"}),
        CodecSpec("q4"),
        CodecSpec("sign"),
    ],
)
def test_error_feedback_residual_is_the_dense_decode_subtracted(spec):
    """UplinkEncoder subtracts only the kept positions of a sparse update, in place: same bits as decoding densely."""
    from fedge.client.uplink import UplinkEncoder
    from fedge.protos.codecs.plan import UplinkPlan

    plan = UplinkPlan(spec, error_feedback=True, dense_below=256, fallback="q8")
    encoder = UplinkEncoder()
    residual: dict[str, np.ndarray] = {}
    for round_ in range(4):
        delta = _update(10 + round_)
        corrected = {k: v + residual[k] if k in residual else v for k, v in delta.items()}
        update = encoder.encode(delta, plan, base_round=round_)
        expected = encode_update(corrected, spec, base_round=round_, fallback="q8", dense_below=256)
        assert update.SerializeToString() == expected.SerializeToString()
        residual = baselines.feedback_residual(corrected, expected)
        assert residual.keys() == encoder.residual.keys()
        for name, value in residual.items():
            assert encoder.residual[name].tobytes() == value.tobytes(), name


def test_error_feedback_keeps_refusing_non_finite_values():
    from fedge.client.uplink import UplinkEncoder
    from fedge.protos.codecs import NonFiniteError
    from fedge.protos.codecs.plan import UplinkPlan

    delta = {"w": np.full(1000, 1e30, np.float32)}  # fp16 values overflow to Inf
    plan = UplinkPlan(CodecSpec("topk", {"ratio": 0.1, "values": "fp16"}), error_feedback=True)
    with pytest.raises(NonFiniteError):
        UplinkEncoder().encode(delta, plan, base_round=0)


def _degenerate_ranges() -> list[np.ndarray]:
    """Tensors whose 8-bit levels need the clip (a subnormal range: 1 / step overflows; Inf; NaN),
    and ranges the blocked min and max leave to the plain reduction (NaN, signed zeros)."""
    rng = np.random.default_rng(7)
    big = rng.standard_normal(4 * BLOCK + 3).astype(np.float32)  # long enough for the blocked min and max
    steps = (np.arange(4 * BLOCK + 3) % 7).astype(np.float32)
    subnormal, huge_inverse = steps * np.float32(1e-40), steps * np.float32(5e-37)
    with_inf, with_nan = big.copy(), big.copy()
    with_inf[5] = np.inf
    with_nan[BLOCK + 1] = np.nan
    constant = np.full(4 * BLOCK, 0.25, np.float32)
    signed_zeros = np.float32([-0.0, 0.0, 1.0, -0.0] * (2 * BLOCK))  # min: which zero is the plain reduction's
    return [subnormal, huge_inverse, with_inf, with_nan, constant, signed_zeros, -signed_zeros]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("index", range(7))
@pytest.mark.parametrize("torch_loaded", [True, False])
def test_q8_skips_the_clip_only_when_it_changes_nothing(monkeypatch, index, torch_loaded):
    _numpy_only(monkeypatch, torch_loaded)
    x = _degenerate_ranges()[index]
    msg = make_codec("q8").encode(x, "t")
    assert msg.data == baselines.uniform_encode(x, 8, False)[0]
    _, lo, scale = baselines.uniform_encode(x, 8, False)
    assert np.float32(list(msg.floats)).tobytes() == np.concatenate([lo, scale]).tobytes()


@pytest.mark.parametrize("torch_loaded", [True, False])
def test_q8_of_read_only_strided_and_offset_updates_matches_the_plain_passes(monkeypatch, recwarn, torch_loaded):
    """The range takes torch's one-pass min and max only on a contiguous row; read-only
    buffers (bytes off the wire) and strided views give the plain bytes, with no warning."""
    _numpy_only(monkeypatch, torch_loaded)
    rng = np.random.default_rng(8)
    base = (rng.standard_normal(10 * BLOCK) * 1e-3).astype(np.float32)
    read_only = np.frombuffer(base.tobytes(), dtype=np.float32)
    shifted = base + np.float32(3.0)  # all positive: the minimum is far from zero
    for x in (read_only, base[::2], base[1:], shifted, -shifted):
        msg = make_codec("q8").encode(x, "t")
        old_bytes, lo, scale = baselines.uniform_encode(np.ascontiguousarray(x), 8, False)
        assert msg.data == old_bytes
        assert np.float32(list(msg.floats)).tobytes() == np.concatenate([lo, scale]).tobytes()
        decoded = make_codec("q8").decode(tensor_pb2.CompressedTensor.FromString(msg.SerializeToString()))
        assert decoded.tobytes() == baselines.uniform_decode(old_bytes, lo, scale, x.shape).tobytes()
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_q8_rounding_by_adding_1_5_times_2_to_the_23_is_rint():
    """The fused encoder's rounding (add ``ROUNDER``, keep the low byte) against
    ``rint`` + uint8 cast: a spread of float32 patterns over [0, 255.5), and every tie
    (k + 0.5) with its two neighbours."""
    top = np.float32(255.5).view(np.uint32)
    spread = np.arange(0, top, 97, dtype=np.uint32).view(np.float32)
    ties = np.arange(256, dtype=np.float32) - np.float32(0.5)
    ties = ties[ties >= 0]
    near = np.concatenate([ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(256))])
    y = np.concatenate([spread, near[near < np.float32(255.5)], np.float32([0.0, 255.0])])
    low_bytes = (y + ROUNDER).view(np.uint32).astype(np.uint8)
    assert np.array_equal(low_bytes, np.rint(y).astype(np.uint8))


def test_stochastic_q8_is_unbiased_and_reproducible_on_long_rows():
    """Stochastic rounding keeps its own full-size path (no fused blocks): same seed, same bytes."""
    x = (np.random.default_rng(9).standard_normal(5 * BLOCK) * 1e-2).astype(np.float32)
    spec = CodecSpec("q8", {"stochastic": True, "seed": 3})
    first, second = make_codec(spec).encode(x, "t"), make_codec(spec).encode(x, "t")
    assert first.data == second.data
    decoded = make_codec(spec).decode(first)
    step = first.floats[1]
    assert np.all(np.abs(decoded - x) <= step * 1.0001)
    assert abs(float(np.mean(decoded - x))) < step / 50  # unbiased: errors cancel over 327k values


def test_fp16_integer_cast_matches_numpy_over_the_float32_range(monkeypatch):
    """numpy-only path (no torch): a spread of all 2**32 bit patterns, and every fp16 pattern back."""
    monkeypatch.setattr(half, "loaded_torch", lambda: None)
    patterns = np.arange(0, 1 << 32, 4093, dtype=np.uint64).astype(np.uint32)  # every exponent, many mantissas
    ties = (np.arange(1, 1 << 16, dtype=np.uint32) << 13) | np.uint32(0x1000)  # exactly half an fp16 step above
    bits = np.concatenate([patterns, ties, ties | np.uint32(0x8000_0000), ties + np.uint32(0x1000)])
    x = bits.view(np.float32)
    with np.errstate(all="ignore"):
        expected = x.astype("<f2")
    assert half.single_to_half(x).view(np.uint16).tobytes() == expected.view(np.uint16).tobytes()
    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view("<f2")
    assert half.half_to_single(every_half).tobytes() == every_half.astype(np.float32).tobytes()


@pytest.mark.parametrize("size", [0, 1, 3, 1 << 20])
def test_new_bytes_is_written_in_place_and_fresh_each_time(size):
    from fedge.protos.codecs import fresh_bytes

    payload, view = fresh_bytes.new_bytes(size)
    view[:] = np.arange(size, dtype=np.uint64).astype(np.uint8)
    data = fresh_bytes.finish(payload)
    assert type(data) is bytes and data == np.arange(size, dtype=np.uint64).astype(np.uint8).tobytes()
    other, other_view = fresh_bytes.new_bytes(size)
    other_view[:] = 7
    assert data == np.arange(size, dtype=np.uint64).astype(np.uint8).tobytes()  # a second buffer shares nothing
    assert b"" == bytes(0) and b"\x00" == bytes(1)  # CPython's shared small bytes are untouched

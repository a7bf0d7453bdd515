"""fp32 and fp16 codecs: round trips and refusal of malformed payloads."""

import numpy as np
import pytest

from fedge.protos.codecs import (
    CodecSpec,
    DTypeMismatchError,
    MalformedPayloadError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownCodecError,
    decode_update,
    encode_update,
    make_codec,
    parse_update,
)
from fedge.protos.v1 import tensor_pb2


@pytest.mark.parametrize(
    "array",
    [
        np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32),
        np.array([np.finfo(np.float32).tiny, -0.0, 1e30], dtype=np.float32),
        np.arange(7, dtype=np.int64),
        np.zeros((0, 4), dtype=np.float32),
        np.array(3.5, dtype=np.float32),
    ],
)
def test_fp32_is_bit_exact(array):
    codec = make_codec("fp32")
    msg = tensor_pb2.CompressedTensor.FromString(codec.encode(array, "t").SerializeToString())
    back = codec.decode(msg)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_fp16_halves_bytes_and_stays_close():
    x = np.random.default_rng(1).normal(size=10_000).astype(np.float32)
    codec = make_codec("fp16")
    msg = codec.encode(x)
    assert len(msg.data) == 2 * x.size
    back = codec.decode(msg)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, x, rtol=1e-3, atol=1e-4)


def test_fp16_is_exact_on_half_precision_values():
    x = np.random.default_rng(2).normal(size=100).astype(np.float16).astype(np.float32)
    assert np.array_equal(make_codec("fp16").decode(make_codec("fp16").encode(x)), x)


def test_truncated_payload_is_refused_with_sizes():
    msg = make_codec("fp32").encode(np.ones(10, np.float32), "w")
    msg.data = msg.data[:-3]
    with pytest.raises(MalformedPayloadError, match="37 bytes"):
        make_codec("fp32").decode(msg)


def test_unknown_codec_lists_known_ones():
    with pytest.raises(UnknownCodecError, match="fp16"):
        make_codec(CodecSpec("zip9"))


def test_update_validation_against_reference():
    ref = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
    good = encode_update(ref, "fp16")
    assert set(decode_update(good, ref)) == {"w", "b"}

    with pytest.raises(ShapeMismatchError, match="missing"):
        decode_update(encode_update({"w": ref["w"]}, "fp32"), ref)
    with pytest.raises(ShapeMismatchError, match="shape"):
        decode_update(encode_update({"w": np.ones((3, 2), np.float32), "b": ref["b"]}, "fp32"), ref)
    with pytest.raises(DTypeMismatchError):
        decode_update(encode_update({"w": ref["w"].astype(np.float64), "b": ref["b"]}, "fp32"), ref)
    with pytest.raises(NonFiniteError, match="'b'"):
        decode_update(encode_update({"w": ref["w"], "b": np.array([0, np.nan, 0], np.float32)}, "fp32"), ref)
    with pytest.raises(MalformedPayloadError):
        decode_update(good, ref, expected_kind=tensor_pb2.UPDATE_KIND_WEIGHTS)


def test_junk_bytes_are_refused():
    with pytest.raises(MalformedPayloadError):
        parse_update(b"\xff\xff\xff\xff")

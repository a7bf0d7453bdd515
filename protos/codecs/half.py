"""float32 <-> IEEE float16 casts at a fair share of memory speed, with or without torch.

numpy casts to and from float16 one element at a time (``npy_floatbits_to_halfbits``):
20-40x slower than a copy, and slower still on values that round to fp16 subnormals,
which training deltas are full of. Two faster paths give the same bits:

- torch's casts (the CPU's F16C/AVX-512 kernels), used only if the process has already
  imported torch (every simulated client, ``fedge-client`` with its trainer, the
  server): fedge's protocol layer never imports torch itself;
- numpy alone (the numpy device runtime, or any process without torch): the cast as
  integer arithmetic on the ``uint32`` bit patterns, one ``BLOCK`` of elements at a
  time so every pass works in the CPU cache, and the way back as a lookup in a
  65,536-entry table built once by numpy's own cast (:func:`_table`).

All paths round to nearest even and agree bit for bit on every finite value,
infinities and overflow (``tests/test_codec_speed_paths.py``, and an exhaustive check
over all 2**32 float32 patterns in :func:`_bits_to_half`'s docstring). A NaN's payload
is what differs (numpy keeps a signalling NaN's bits, the hardware quiets it), so a
tensor or block with a NaN takes numpy's own cast.

Both directions write where the result must end up: :func:`single_to_half_bytes` casts
into the payload's ``bytes`` (the fp16 codec's encoder), and torch's cast back fills an
array numpy allocated, which gets huge pages (filling a new 44 MB array takes ~10,700
page faults from torch's allocator, ~520 from numpy's, and about twice the time).

Written by hand: no numpy-only library casts float16 fast.
"""

from __future__ import annotations

import sys
import warnings
from functools import lru_cache

import numpy as np

from fedge.protos.codecs import fresh_bytes

#: Below this many elements numpy's cast is as fast as handing the array to torch.
TORCH_MIN_ELEMENTS = 4096
#: Below this many elements numpy's cast is as fast as the blocked integer cast.
BITS_MIN_ELEMENTS = 1024
#: Elements per block of the integer cast: 64k x 4 bytes x 3 buffers fit a core's L2 cache.
BLOCK = 1 << 16

_ABS = np.uint32(0x7FFF_FFFF)
_INF32 = 0x7F80_0000
#: |x| below 2**-14 (this bit pattern) is an fp16 subnormal or zero.
_SMALLEST_NORMAL = 113 << 23
#: 0.5: adding it to a |x| < 2**-14 rounds |x| to a multiple of 2**-24 (fp16's subnormal step).
_HALF_BITS = np.uint32(126 << 23)
#: Rebias the exponent from 127 to 15 and add the round-to-nearest bias 0xFFF (wraps in uint32).
_REBIAS = np.uint32((((15 - 127) << 23) + 0xFFF) & 0xFFFF_FFFF)
_INF16 = 0x7C00


def loaded_torch() -> object | None:
    """The torch module if this process has imported it, else None (never imports it)."""
    return sys.modules.get("torch")


def _has_nan(array: np.ndarray) -> bool:
    """Whether a float array holds a NaN: ``max`` propagates NaN, so one reduction tells."""
    return bool(array.size) and bool(np.isnan(array.max()))


def single_to_half(array: np.ndarray) -> np.ndarray:
    """``array`` as a contiguous little-endian float16 array (same shape); like
    ``np.ascontiguousarray(array, dtype="<f2")``, bit for bit."""
    torch = loaded_torch()
    x = np.asarray(array)
    if x.dtype != np.float32 or x.size < BITS_MIN_ELEMENTS:
        return np.ascontiguousarray(x, dtype="<f2")
    if torch is None or x.size < TORCH_MIN_ELEMENTS:
        return _bits_to_half(np.ascontiguousarray(x).astype("=f4", copy=False)).reshape(x.shape)
    if _has_nan(x):
        return np.ascontiguousarray(x, dtype="<f2")
    source = torch.from_numpy(np.ascontiguousarray(x).astype("=f4", copy=False))  # type: ignore[attr-defined]
    return source.to(torch.float16).numpy().astype("<f2", copy=False)  # type: ignore[attr-defined]


def single_to_half_bytes(array: np.ndarray) -> bytes:
    """``single_to_half(array).tobytes()``, bit for bit, with the cast writing straight
    into the new ``bytes`` object (:mod:`~fedge.protos.codecs.fresh_bytes`): no
    float16 array of the update's size beside it, no copy of it into the payload."""
    torch = loaded_torch()
    x = np.asarray(array)
    if x.dtype != np.float32 or x.size < BITS_MIN_ELEMENTS or sys.byteorder != "little":
        return single_to_half(x).tobytes()
    payload, view = fresh_bytes.new_bytes(2 * x.size)
    out = view.view("<f2")
    source = np.ascontiguousarray(x).reshape(-1)
    if torch is None or x.size < TORCH_MIN_ELEMENTS:
        _bits_to_half(source, out)
    elif _has_nan(source):
        np.copyto(out, source, casting="unsafe")  # numpy's cast: NaN payloads as numpy keeps them
    else:
        with warnings.catch_warnings():  # a read-only update: torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(out).copy_(torch.from_numpy(source))  # type: ignore[attr-defined]
    return fresh_bytes.finish(payload)


def half_to_single(array: np.ndarray) -> np.ndarray:
    """A float16 array as a new float32 array (same shape); like ``array.astype(np.float32)``.

    With torch, the cast writes into an array numpy allocates (numpy asks the kernel for
    huge pages on large arrays: ~20x fewer page faults than a tensor torch allocates)."""
    torch = loaded_torch()
    h = np.asarray(array)
    if h.size < BITS_MIN_ELEMENTS:
        return h.astype(np.float32)
    if torch is None or h.size < TORCH_MIN_ELEMENTS:
        return _table_lookup(h)
    with warnings.catch_warnings():  # bytes off the wire are read-only; torch only reads them here
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(h.astype("=f2", copy=False))  # type: ignore[attr-defined]
    out = np.empty(h.shape, dtype=np.float32)
    torch.from_numpy(out).copy_(source)  # type: ignore[attr-defined]
    return h.astype(np.float32) if _has_nan(out) else out  # NaN payloads as numpy keeps them


def _bits_to_half(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 -> float16 (round to nearest even) in uint32 arithmetic, block by block,
    into ``out`` (a contiguous float16 array of ``x``'s size) if given, else a new array.

    Per element, with ``a = |x|``'s bits: the normal result ``n`` rebiases the exponent
    and rounds the 23-bit mantissa to 10 bits (add ``0xFFF`` plus the kept mantissa's
    lowest bit, shift right 13), clamped to Inf (``0x7C00``; overflow carries into the
    exponent by itself). The subnormal result ``s`` is ``bits(a + 0.5) - bits(0.5)``:
    the float add rounds ``a`` to fp16's subnormal step. With ``a`` raised to at least
    2**-14 before ``n``, ``min(n, s)`` is ``s`` below 2**-14 (``n`` is then 0x400, ``s``
    at most 0x400) and ``n`` above (``s`` is then ``a * 2**24`` rounded, never below
    fp16's bits of ``a``). Then the sign. Checked against numpy's cast on all 2**32
    float32 bit patterns (NaNs aside: a block with a NaN takes numpy's cast).
    """
    flat = x.reshape(-1)
    bits = flat.view(np.uint32)
    out = np.empty(flat.size, dtype="<u2") if out is None else out.view("<u2")
    width = min(BLOCK, flat.size)
    magnitude, normal, scratch = (np.empty(width, np.uint32) for _ in range(3))
    floor = np.full(width, _SMALLEST_NORMAL, np.uint32)  # arrays: numpy's min/max with a scalar is not vectorised
    infinity = np.full(width, _INF16, np.uint32)
    for start in range(0, flat.size, BLOCK):
        block = bits[start : start + BLOCK]
        size = block.size
        a, n, t, dst = magnitude[:size], normal[:size], scratch[:size], out[start : start + size]
        np.bitwise_and(block, _ABS, out=a)
        if a.max() > _INF32:  # a NaN: numpy's cast keeps its payload
            np.copyto(dst.view("<f2"), flat[start : start + size], casting="unsafe")
            continue
        np.maximum(a, floor[:size], out=n)
        np.right_shift(n, 13, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(n, t, out=n)
        np.add(n, _REBIAS, out=n)
        np.right_shift(n, 13, out=n)
        np.minimum(n, infinity[:size], out=n)
        subnormal = a.view(np.float32)
        np.add(subnormal, np.float32(0.5), out=subnormal)
        np.subtract(a, _HALF_BITS, out=a)
        np.minimum(n, a, out=n)
        np.right_shift(block, 16, out=t)
        np.bitwise_and(t, 0x8000, out=t)
        np.bitwise_or(n, t, out=n)
        np.copyto(dst, n, casting="unsafe")
    return out.view("<f2")


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    """float32 value of every float16 bit pattern, by numpy's own cast (256 KiB, built once)."""
    table = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    table.flags.writeable = False
    return table


def _table_lookup(h: np.ndarray) -> np.ndarray:
    """float16 -> float32 by table lookup, block by block (numpy's cast's bits, NaNs included)."""
    codes = h.reshape(-1).view(np.uint16)
    out = np.empty(codes.size, dtype=np.float32)
    table = _table()
    for start in range(0, codes.size, BLOCK):
        np.take(table, codes[start : start + BLOCK], out=out[start : start + BLOCK], mode="clip")
    return out.reshape(h.shape)

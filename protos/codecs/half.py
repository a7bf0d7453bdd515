"""float32 <-> IEEE float16 casts that run at memory speed when torch is loaded.

numpy casts to and from float16 one element at a time (``npy_floatbits_to_halfbits``):
20-40x slower than a copy, and slower still on values that round to fp16 subnormals,
which training deltas are full of. torch's casts use the CPU's F16C/AVX-512 kernels.
fedge's protocol layer must not import torch (a device may run with numpy and protobuf
only), so torch is used only if the process has already imported it; every simulated
client, ``fedge-client`` with its trainer, and the server have.

Both round to nearest even and agree bit for bit on every finite value, infinities
and overflow; they differ only in NaN payloads (numpy keeps a signalling NaN's bits,
the hardware quiets it), so a tensor with a NaN takes numpy's path. The check costs
a min and a max (NaN propagates through both).

Written by hand: no numpy-only library casts float16 fast, and a bit-twiddling cast in
numpy needs a dozen passes over the data (slower than numpy's own cast).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

#: Below this many elements numpy's cast is as fast as handing the array to torch.
TORCH_MIN_ELEMENTS = 4096


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
    if torch is None or x.dtype != np.float32 or x.size < TORCH_MIN_ELEMENTS or _has_nan(x):
        return np.ascontiguousarray(x, dtype="<f2")
    source = torch.from_numpy(np.ascontiguousarray(x).astype("=f4", copy=False))  # type: ignore[attr-defined]
    return source.to(torch.float16).numpy().astype("<f2", copy=False)  # type: ignore[attr-defined]


def half_to_single(array: np.ndarray) -> np.ndarray:
    """A float16 array as a new float32 array (same shape); like ``array.astype(np.float32)``."""
    torch = loaded_torch()
    h = np.asarray(array)
    if torch is None or h.size < TORCH_MIN_ELEMENTS:
        return h.astype(np.float32)
    with warnings.catch_warnings():  # bytes off the wire are read-only; torch only reads them here
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(h.astype("=f2", copy=False))  # type: ignore[attr-defined]
    out: np.ndarray = source.to(torch.float32).numpy()  # type: ignore[attr-defined]
    return h.astype(np.float32) if _has_nan(out) else out  # NaN payloads as numpy keeps them

"""Peak training memory of a round: a deterministic count of live activation bytes.

What is measured: the bytes of the tensors autograd saves for the backward pass
(activations), counted through ``torch.autograd.graph.saved_tensors_hooks``: a saved
tensor's storage is added when it is packed and removed when autograd frees it (after
the backward pass through its node). Storages saved twice (a ReLU output that the next
conv also saves) count once; parameters are not activations and are counted apart, as
``param_bytes`` (weights + gradients + optimiser state). Training peak =
``param_bytes + activation peak``.

Why this and not RSS or tracemalloc: on CPU torch has no allocator statistics
(``torch.cuda.max_memory_allocated`` is CUDA-only), tracemalloc does not see torch's
C++ allocations, and RSS is noisy (the allocator keeps freed pages, other threads
allocate). The hook count is exact for what training keeps alive between forward and
backward, which is what checkpointing trades for time, and it is the same on every run.
It includes the activations recomputed during backward when checkpointing with
``use_reentrant=True`` (their saves go through the same hooks while ``backward`` runs
inside :meth:`ActivationMeter.track`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class _Packed:
    """A saved tensor and the meter that counts its storage while it is alive."""

    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter, key: int | None) -> None:
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


class ActivationMeter:
    """Live and peak bytes of autograd's saved activations (parameters excluded).

    Use ``with meter.track(model): loss = ...; loss.backward()``; read ``peak_bytes``.
    """

    def __init__(self) -> None:
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[int, list[int]] = {}  # storage ptr -> [bytes, references]
        self._params: set[int] = set()

    def _pack(self, tensor: torch.Tensor) -> _Packed:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._params or storage.nbytes() == 0:
            return _Packed(tensor, self, None)
        entry = self._storages.get(key)
        if entry is None:
            self._storages[key] = [storage.nbytes(), 1]
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        else:
            entry[1] += 1
        return _Packed(tensor, self, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[key]

    @contextlib.contextmanager
    def track(self, model: nn.Module) -> Iterator[ActivationMeter]:
        """Count saved tensors of forward and backward passes run inside this block."""
        self._params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda packed: packed.tensor):
            yield self


def param_bytes(model: nn.Module, optimiser_slots: int) -> int:
    """Bytes of trainable weights, their gradients and ``optimiser_slots`` state tensors each (SGD momentum: 1)."""
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return frozen + trainable * (2 + optimiser_slots)

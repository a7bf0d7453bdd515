"""Lossless sparse coding: every nonzero entry, its position index-coded (a pruned model's broadcast).

A magnitude-pruned model is mostly exact zeros; ``compression.downlink=nonzero`` sends each
tensor as top-k's two parts (positions, values) with ``k`` = its number of nonzeros, so
the decoded tensor equals the encoded one bit for bit (``values=fp32``). On a dense tensor
it costs the index part on top of the values: use it for pruned models only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np

from fedge.protos.codecs.base import Codec, register
from fedge.protos.codecs.sparse import TopKCodec


@register("nonzero")
class NonZeroCodec(TopKCodec):
    """Keep exactly the nonzero entries of each tensor (lossless with ``values="fp32"``)."""

    def __init__(self, values: str = "fp32") -> None:
        super().__init__(1.0, values, "tensor")

    def allocate(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Codec]:
        out: dict[str, Codec] = {}
        for name, array in arrays.items():
            codec = copy.copy(self)
            codec.keep = int(np.count_nonzero(array))
            out[name] = codec
        return out

"""Weight sharing by 1-D k-means (Han et al. 2016, "Deep Compression"): a codebook of
``2**bits`` float32 centroids plus one ``bits``-bit index per element.

Lloyd's algorithm in one dimension: centroids start at evenly spaced quantiles, and each
iteration assigns values with ``searchsorted`` on the midpoints between sorted
centroids (O(n log c)) and moves centroids to their members' means (``bincount``).
Wire layout: ``ints = [bits]``, ``data`` = ``bits``-bit indices, one float32 part = the
codebook. Written by hand because scikit-learn's KMeans is neither a client dependency nor fast
on millions of 1-D points.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np

from fedge.protos.codecs import bitpack
from fedge.protos.codecs.base import Codec, ints_of, num_elements, register
from fedge.protos.codecs.errors import MalformedPayloadError
from fedge.protos.v1 import tensor_pb2 as pb


def kmeans_1d(
    values: np.ndarray, clusters: int, iterations: int = 8, sample: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids (c,), assignment (n,))`` of a 1-D k-means; centroids sorted.

    Centroids are fitted on an evenly strided subsample of at most ``sample`` values
    (the distribution, not every value, decides 1-D centroids); every value is then
    assigned to its nearest centroid.
    """
    fit = values[:: max(1, values.size // sample)]
    centroids = np.quantile(fit, np.linspace(0, 1, clusters)).astype(np.float32)
    for _ in range(iterations):
        centroids = np.sort(centroids)
        assignment = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, fit)
        counts = np.bincount(assignment, minlength=clusters)
        sums = np.bincount(assignment, weights=fit, minlength=clusters)
        moved = np.divide(sums, counts, out=centroids.astype(np.float64), where=counts > 0)
        centroids = moved.astype(np.float32)
    centroids = np.sort(centroids)
    return centroids, np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)


@register("kmeans")
class KMeansCodec(Codec):
    """Codebook of ``2**bits`` centroids and ``bits``-bit indices (1..8)."""

    wire_params = (1, 0)

    def __init__(self, bits: int = 4, iterations: int = 8) -> None:
        bits = int(bits)
        if not 1 <= bits <= 8:
            raise ValueError(f"kmeans: bits must be in 1..8, got {bits}")
        self.bits = bits
        self.iterations = int(iterations)

    def _encode_into(self, array: np.ndarray, msg: pb.CompressedTensor, state: MutableMapping | None) -> None:
        flat = np.asarray(array, dtype=np.float32).ravel()
        clusters = 1 << self.bits
        if flat.size:
            centroids, assignment = kmeans_1d(flat, clusters, self.iterations)
        else:
            centroids, assignment = np.zeros(clusters, np.float32), np.zeros(0, np.int64)
        msg.ints.append(self.bits)
        msg.data = bitpack.pack(assignment.astype(np.uint8), self.bits)
        msg.parts.add(codec="fp32", shape=[clusters], dtype=pb.DTYPE_FLOAT32, data=centroids.astype("<f4").tobytes())

    def _decode(self, msg: pb.CompressedTensor, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        (bits,) = ints_of(msg, 1)
        if not 1 <= bits <= 8 or len(msg.parts) != 1 or len(msg.parts[0].data) != 4 * (1 << bits):
            raise MalformedPayloadError(f"tensor {msg.name!r} (kmeans): bad bits or codebook")
        codebook = np.frombuffer(msg.parts[0].data, dtype="<f4")
        assignment = bitpack.unpack(msg.data, num_elements(shape), bits)
        return codebook[assignment].reshape(shape).astype(dtype, copy=False)

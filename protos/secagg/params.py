"""A round's secure-aggregation parameters (:class:`SecAggSetup`): built, checked, derived.

The server builds the setup with :func:`make_setup`; a device (and the server itself)
turns it into a :class:`RoundPlan` with :func:`check_setup`, which refuses anything that
would break the protocol's guarantees: a threshold of half the neighbours or less (a
server that lies about who dropped could then collect both secrets of a device), a ring
other than the smallest one the sum of ``n`` devices cannot wrap in, seeds of the wrong size, participants that are
not a strictly ascending list.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedge.protos.secagg import graph
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.secagg.quantise import Quantiser, modulus
from fedge.protos.v1 import secagg_pb2 as pb

SEED_BYTES = 32


def default_threshold(k: int) -> int:
    """The smallest safe ``t`` for ``k`` neighbours: more than half of them."""
    return k // 2 + 1


def float_layout(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) of every float tensor, in order: what the vector is made of."""
    return [(name, tuple(a.shape)) for name, a in arrays.items() if np.issubdtype(np.asarray(a).dtype, np.floating)]


def layout_digest(layout: Sequence[tuple[str, Sequence[int]]]) -> bytes:
    """SHA-256 over the (name, shape) list that makes up an update vector, in order."""
    digest = hashlib.sha256(b"fedge/secagg/v1/layout")
    for name, shape in layout:
        digest.update(name.encode() + b"\0" + ",".join(str(int(s)) for s in shape).encode() + b"\n")
    return digest.digest()


def make_setup(
    server_round: int,
    participants: Sequence[int],
    vector_length: int,
    digest: bytes,
    value_bits: int = 8,
    clip: float = 0.05,
    neighbours: int = 0,
    threshold: int = 0,
    kept: int = 0,
    max_examples: float = 0.0,
    dropout: float = graph.DEFAULT_DROPOUT,
) -> pb.SecAggSetup:
    """A round's setup with fresh seeds; ``neighbours``/``threshold`` 0 pick the defaults
    (``k`` sized to lose a ``dropout`` share of the devices: :func:`graph.neighbour_count`)."""
    nodes = sorted(int(p) for p in participants)
    k = neighbours or graph.neighbour_count(len(nodes), dropout)
    setup = pb.SecAggSetup(
        server_round=server_round,
        participants=nodes,
        neighbours=k,
        threshold=threshold or default_threshold(k),
        graph_seed=os.urandom(SEED_BYTES),
        modulus=modulus(value_bits, len(nodes)),
        value_bits=value_bits,
        clip=clip,
        vector_length=vector_length,
        layout_digest=digest,
        kept=kept,
        coordinate_seed=os.urandom(SEED_BYTES) if kept else b"",
        max_examples=max_examples,
    )
    check_setup(setup)
    return setup


@dataclass(frozen=True)
class RoundPlan:
    """A checked setup and what follows from it."""

    setup: pb.SecAggSetup
    participants: tuple[int, ...]
    neighbours: dict[int, tuple[int, ...]]  # node -> its k neighbours
    quantiser: Quantiser

    @property
    def server_round(self) -> int:
        return int(self.setup.server_round)

    @property
    def threshold(self) -> int:
        return int(self.setup.threshold)

    @property
    def modulus(self) -> int:
        """The ring's modulus ``M``: masked values are integers modulo ``M``."""
        return int(self.setup.modulus)

    @property
    def sent_coordinates(self) -> int:
        """Update coordinates each device sends (all, or the sparse variant's ``kept``)."""
        return int(self.setup.kept or self.setup.vector_length)

    @property
    def length(self) -> int:
        """Length of the masked vector: the sent coordinates plus one weight coordinate."""
        return self.sent_coordinates + 1

    def x_of(self, node: int) -> int:
        """A node's Shamir x-coordinate: its position among the participants, plus one."""
        return self._positions[node] + 1

    @functools.cached_property
    def _positions(self) -> dict[int, int]:
        return {node: i for i, node in enumerate(self.participants)}


def check_setup(setup: pb.SecAggSetup) -> RoundPlan:
    """The plan of a valid setup; :class:`SecAggError` naming the first problem otherwise."""
    nodes = tuple(int(p) for p in setup.participants)
    n = len(nodes)
    if n < 2 or any(a >= b for a, b in zip(nodes, nodes[1:])):
        raise SecAggError("participants must be at least two distinct node ids in ascending order")
    k, t = int(setup.neighbours), int(setup.threshold)
    graph.check_degree(n, k)
    if not k // 2 < t <= k:
        raise SecAggError(f"threshold t={t} must be more than half of k={k} neighbours and at most k")
    if len(setup.graph_seed) != SEED_BYTES:
        raise SecAggError(f"graph_seed must be {SEED_BYTES} bytes")
    quantiser = Quantiser(int(setup.value_bits), float(setup.clip))
    needed = modulus(quantiser.value_bits, n)
    if setup.modulus != needed:
        raise SecAggError(f"modulus {setup.modulus} != {needed} ({quantiser.value_bits} bits for {n} devices)")
    if setup.vector_length < 1 or len(setup.layout_digest) != 32:
        raise SecAggError("vector_length must be >= 1 and layout_digest 32 bytes")
    if setup.kept:
        if setup.kept > setup.vector_length or len(setup.coordinate_seed) != SEED_BYTES:
            raise SecAggError(f"sparse variant: kept must be <= vector_length and coordinate_seed {SEED_BYTES} bytes")
    elif setup.coordinate_seed:
        raise SecAggError("coordinate_seed given for a dense round")
    if not (math.isfinite(setup.max_examples) and setup.max_examples >= 0):
        raise SecAggError(f"max_examples must be a finite number >= 0, got {setup.max_examples}")
    return RoundPlan(setup, nodes, graph.neighbours(nodes, k, bytes(setup.graph_seed)), quantiser)

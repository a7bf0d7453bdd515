"""Shamir t-of-n secret sharing over the prime field GF(2**127 - 1).

A secret ``s`` (an integer below the prime) becomes the constant term of a random
polynomial of degree ``t - 1``; share ``i`` is the polynomial at ``x_i`` (distinct,
non-zero). Any ``t`` shares give ``s`` back by Lagrange interpolation at 0; ``t - 1``
shares are consistent with every secret equally (information-theoretic hiding), so
interpolating from them yields an unrelated value.

Written by hand: ``cryptography`` has no secret sharing, and the Python libraries that
do are unmaintained or fixed to 16-byte secrets over GF(2**128) with their own wire
format (pycryptodome's ``Crypto.Protocol.SecretSharing``, which would also be a second
crypto dependency on devices). The field is the Mersenne prime ``2**127 - 1``: a share
is 16 bytes, and secrets are 127-bit values from which keys are derived with HKDF
(:mod:`fedge.protos.secagg.keys`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from fedge.protos.secagg.errors import SecAggError

#: The field's prime, 2**127 - 1 (a Mersenne prime).
PRIME = (1 << 127) - 1
#: Bytes of one share or secret on the wire (big-endian).
SHARE_BYTES = 16


def random_secret() -> int:
    """A uniform field element from the OS's CSPRNG."""
    while True:
        value = secrets.randbits(127)
        if value < PRIME:
            return value


def split(secret: int, xs: Sequence[int], threshold: int) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for each x-coordinate in ``xs``; any ``threshold`` rebuild it."""
    if not 0 <= secret < PRIME:
        raise SecAggError("secret is not a field element")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be in 1..{len(xs)} (number of shares)")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in xs}


def combine(shares: Mapping[int, int]) -> int:
    """The secret whose polynomial passes through ``shares`` ({x: y}); Lagrange at 0.

    With fewer shares than the threshold the result is a field element unrelated to
    the secret. Raises :class:`SecAggError` for no shares, a zero or repeated x, or a
    value outside the field.
    """
    if not shares:
        raise SecAggError("no shares to combine")
    for x, y in shares.items():
        if not 0 < x < PRIME or not 0 <= y < PRIME:
            raise SecAggError("share outside the field")
    return evaluate_at(shares, 0)


def evaluate_at(shares: Mapping[int, int], x: int) -> int:
    """The value at ``x`` of the polynomial through ``shares`` (to check further shares)."""
    total = 0
    points = list(shares.items())
    for i, (xi, yi) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * (x - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        total = (total + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def evaluate_many(shares: Mapping[int, int], xs: Sequence[int]) -> list[int]:
    """The polynomial through ``shares`` at each of ``xs`` (none of them a share's x).

    Barycentric Lagrange form with one batched inversion per point: about ``t**2 + 4 t``
    field multiplications and one inversion per point, where :func:`evaluate_at` takes
    ``t**2`` and ``t`` inversions per point (the server checks every spare share of
    every rebuilt secret, so this is its inner loop at large ``k``).
    """
    points = list(shares.items())
    weights = []
    for i, (xi, _) in enumerate(points):
        denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                denominator = denominator * (xi - xj) % PRIME
        weights.append(pow(denominator, -1, PRIME))
    out = []
    for x in xs:
        differences = [(x - xi) % PRIME for xi, _ in points]
        if 0 in differences:
            raise SecAggError("evaluate_many: a point is one of the shares' x-coordinates")
        prefix = [1]  # prefix products, for one inversion of all differences (Montgomery's trick)
        for d in differences:
            prefix.append(prefix[-1] * d % PRIME)
        inverse = pow(prefix[-1], -1, PRIME)
        total = 0
        for i in range(len(points) - 1, -1, -1):
            inv_d = inverse * prefix[i] % PRIME
            inverse = inverse * differences[i] % PRIME
            total = (total + weights[i] * points[i][1] % PRIME * inv_d) % PRIME
        out.append(total * prefix[-1] % PRIME)
    return out


def to_bytes(value: int) -> bytes:
    """A field element as 16 big-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    """A field element from 16 big-endian bytes (:class:`SecAggError` otherwise)."""
    if len(data) != SHARE_BYTES:
        raise SecAggError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise SecAggError("share is not a field element")
    return value


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % PRIME
    return result

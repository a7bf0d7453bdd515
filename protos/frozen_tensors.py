"""Which model tensors a partial update leaves out: one rule for both ends of the wire.

``client.freeze`` (patterns of tensors to keep fixed) or ``client.trainable`` (patterns
of the only tensors that train; everything else is frozen) name state tensors with
``fnmatch`` patterns (``"0.*"``, ``"*.weight"``). A frozen tensor is not trained and
not sent: the update holds only the trainable tensors. The server computes the same
set from its own config and keeps frozen tensors as they are, bit for bit; a reply
that carries a frozen tensor is refused, not trusted.

Plain Python, part of the wire contract (the device's trainer and the server's
:class:`~fedge.strategies.CompressedStrategy` both import it), so both sides agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase


def frozen_names(names: Iterable[str], freeze: Sequence[str] = (), trainable: Sequence[str] = ()) -> set[str]:
    """The tensor names that are frozen under ``freeze`` / ``trainable`` patterns.

    Raises ``ValueError`` if both are given, or if a pattern matches no tensor (a typo
    would otherwise silently train everything).
    """
    names = list(names)
    if freeze and trainable:
        raise ValueError("set client.freeze or client.trainable, not both")
    for pattern in (*freeze, *trainable):
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ValueError(f"pattern {pattern!r} matches no model tensor (names look like {names[:3]})")
    if trainable:
        frozen = {n for n in names if not any(fnmatchcase(n, p) for p in trainable)}
    else:
        frozen = {n for n in names if any(fnmatchcase(n, p) for p in freeze)}
    if len(frozen) == len(names):
        raise ValueError("every model tensor is frozen: nothing would train")
    return frozen

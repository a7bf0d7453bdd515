"""Frozen tensors for transfer learning and partial updates.

``client.freeze`` (patterns of tensors to keep fixed) or ``client.trainable`` (patterns
of the only tensors that train; everything else is frozen) name state tensors with
``fnmatch`` patterns (``"0.*"``, ``"*.weight"``). A frozen tensor is not trained and
not sent: the update holds only the trainable tensors. The server computes the same
set from its own config (:func:`frozen_names`) and keeps frozen tensors as they are,
bit for bit; a reply that carries a frozen tensor is refused, not trusted.

Plain Python, shared by the device and the server, so both sides agree on the set.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


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


def freeze_parameters(model: nn.Module, frozen: set[str]) -> None:
    """Set ``requires_grad`` off for the frozen parameters and on for the rest."""
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)

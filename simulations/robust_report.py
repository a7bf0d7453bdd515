"""The robustness part of ``fedge-report``: who attacked, and what the robust rule did.

Reads the ``attack`` and ``robust`` sections ``fedge-sim`` writes into ``results.json``
(:func:`fedge.simulations.experiment.robustness_sections`) and renders them as markdown:
the attackers and the backdoor's final success rate, then per round and device each
update that was clipped or excluded and why, with each kept update's anomaly score.
"""

from __future__ import annotations

from typing import Any


def robust_markdown(results: dict[str, Any]) -> list[str]:
    """Markdown lines for one run's ``attack`` and ``robust`` sections ([] if it has neither)."""
    lines: list[str] = []
    attack = results.get("attack")
    if attack:
        success = attack.get("backdoor_success")
        tail = f"; backdoor success after the last round {success[-1]:.3f}" if success else ""
        lines += ["", f"Attack: `{attack['name']}` from round {attack['start_round']}, attackers {attack['attackers']}{tail}."]
    decisions = results.get("robust")
    if decisions:
        attackers = set(attack["attackers"]) if attack else set()
        lines += ["", "Robust aggregation, per round and device (clipped, excluded, or kept with its score):", ""]
        lines += ["| round | device | attacker | action | why |", "|---:|---:|---|---|---|"]
        lines += [
            f"| {d['server_round']} | {d['node_id'] if d['node_id'] >= 0 else 'all'} | "
            f"{'yes' if d['node_id'] in attackers else ''} | {d['action']} | {d['reason']} |"
            for d in decisions
        ]
    return lines

"""One secure-aggregation round between the server's state machine and devices, in process.

Drives :class:`~fedge.strategies.secagg.SecAggServerRound` and
:class:`~fedge.client.secagg.SecAggDevice` objects through the four stages with
serialised messages (so byte counts are the real protobuf sizes), with devices that
vanish before or after their masked input and an optional hook that tampers with a
reply. Tests use it for exactness, dropouts and bad input; ``bench/secagg.py`` for
bytes and CPU time at n = 10, 100, 1000 without training anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedge.client.secagg import SecAggDevice
from fedge.protos.secagg.errors import SecAggError
from fedge.protos.v1 import secagg_pb2 as pb
from fedge.strategies.secagg.state import SecAggServerRound

#: ``tamper(stage, node, reply) -> reply``: replaces what a device sends (tests of bad input).
Tamper = Callable[[str, int, pb.SecAggReply], pb.SecAggReply]


@dataclass
class ProtocolCost:
    """Bytes (serialised request/reply protos) and CPU seconds, per device and on the server."""

    uplink_bytes: dict[int, int] = field(default_factory=dict)
    downlink_bytes: dict[int, int] = field(default_factory=dict)
    device_cpu_s: dict[int, float] = field(default_factory=dict)
    server_cpu_s: float = 0.0

    def _add(self, table: dict, node: int, value: float) -> None:
        table[node] = table.get(node, 0) + value


def run_round(
    server: SecAggServerRound,
    devices: Mapping[int, SecAggDevice],
    vectors: Mapping[int, np.ndarray],
    drop_before_masking: Collection[int] = (),
    drop_after_masking: Collection[int] = (),
    tamper: Tamper | None = None,
    cost: ProtocolCost | None = None,
) -> np.ndarray | None:
    """Run all four stages; the survivors' exact sum, or None if the round was abandoned.

    ``vectors`` holds each device's integer vector (``server.plan.length`` values below
    ``2**value_bits``). Devices in ``drop_before_masking`` vanish after sharing keys,
    those in ``drop_after_masking`` after sending their masked input.
    """
    cost = cost if cost is not None else ProtocolCost()

    def stage(name: str, requests: Mapping[int, pb.SecAggRequest], answer: Callable[[int, pb.SecAggRequest], pb.SecAggReply]):
        replies: dict[int, pb.SecAggReply | str] = {}
        for node, request in requests.items():
            wire = request.SerializeToString()
            cost._add(cost.downlink_bytes, node, len(wire))
            start = time.process_time()
            try:
                reply = answer(node, pb.SecAggRequest.FromString(wire))
            except SecAggError as exc:
                replies[node] = f"device error: {exc}"
                continue
            finally:
                cost._add(cost.device_cpu_s, node, time.process_time() - start)
            if tamper is not None:
                reply = tamper(name, node, reply)
            data = reply.SerializeToString()
            cost._add(cost.uplink_bytes, node, len(data))
            replies[node] = pb.SecAggReply.FromString(data)
        return replies

    def on_server(call: Callable, *args):
        start = time.process_time()
        try:
            return call(*args)
        finally:
            cost.server_cpu_s += time.process_time() - start

    setup = on_server(server.setup_request)
    answers = stage("keys", {n: setup for n in server.plan.participants}, lambda n, r: devices[n].answer(r))
    rosters = on_server(server.receive_keys, answers)
    answers = stage("shares", rosters, lambda n, r: devices[n].answer(r))
    bundles = on_server(server.receive_shares, answers)
    present = {n: r for n, r in bundles.items() if n not in drop_before_masking}
    answers = stage("masked", present, lambda n, r: devices[n].mask_vector(r, vectors[n]))
    answers.update({n: "vanished before its masked input" for n in bundles if n in drop_before_masking})
    if not bundles:
        return None
    requests = on_server(server.receive_masked, answers)
    present = {n: r for n, r in requests.items() if n not in drop_after_masking}
    answers = stage("revealed", present, lambda n, r: devices[n].answer(r))
    answers.update({n: "vanished after its masked input" for n in requests if n in drop_after_masking})
    if not requests:
        return None
    return on_server(server.receive_unmask, answers)

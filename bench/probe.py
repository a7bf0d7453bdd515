"""One training round with the first device that joins: a smoke check of a deployment.

Used by ``bench.client_install`` (a freshly installed device) and the tests: wait for
a device, send it one train task built by CompressedStrategy around Flower's FedAvg,
and tell the federation it is over so the device leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import FedAvg

from fedge.client.train_config import TrainConfig
from fedge.server.grpc_grid import GrpcGrid, WireTraffic
from fedge.server.transport import FederationServer
from fedge.strategies import CompressedStrategy
from fedge.tasks.base import FederatedTask


@dataclass
class ProbeResult:
    """The device's reply to one train task and the gRPC bytes of that round."""

    reply: Message
    wire: WireTraffic

    @property
    def ok(self) -> bool:
        return not self.reply.has_error()


def probe_device(
    server: FederationServer, task: FederatedTask, join_timeout_s: float = 60.0, train: TrainConfig | None = None
) -> ProbeResult:
    """Train one round on the first device to join ``server``; then finish the federation."""
    grid = GrpcGrid(server)
    grid.wait_for_nodes(1, timeout_s=join_timeout_s)
    strategy = CompressedStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1))
    torch.manual_seed(0)
    initial = ArrayRecord(task.build_model().state_dict())
    config = ConfigRecord((train or TrainConfig(local_epochs=1)).to_config())
    messages = list(strategy.configure_train(1, initial, config, grid))[:1]
    reply = grid.send_and_receive(messages)[0]
    grid.close()
    return ProbeResult(reply, grid.wire[1])

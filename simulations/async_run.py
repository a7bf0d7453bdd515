"""``fedge-sim mode=async``: a FedBuff run on a simulated fleet (one machine, ``local`` or ``ray``).

:func:`run_async` wires the run's CompressedStrategy into a
:class:`~fedge.strategies.fedbuff.FedBuffAggregator`, the Grid into a
:class:`~fedge.simulations.devices.async_fleet.SimulatedFleet` and runs
:func:`~fedge.server.async_driver.run_async_federation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from omegaconf import DictConfig

from fedge.conf.build import ConfigError
from fedge.conf.modes import mode_settings
from fedge.server.async_driver import AsyncFederationResult, run_async_federation
from fedge.server.evaluation import CentralEvaluator
from fedge.server.federation import RoundRecord
from fedge.server.grid import FedgeGrid
from fedge.simulations.devices.async_fleet import SimulatedFleet
from fedge.simulations.devices.profile import DeviceProfile
from fedge.simulations.devices.trace import TracedDevice
from fedge.strategies.compressed import CompressedStrategy
from fedge.strategies.fedbuff import FedBuffAggregator

@dataclass
class AsyncRun:
    """A finished async simulation: its result and what results.json adds."""

    result: AsyncFederationResult
    fleet: SimulatedFleet
    section: dict[str, Any]


def run_async(
    cfg: DictConfig,
    compressed: CompressedStrategy,
    grid: FedgeGrid,
    devices: Mapping[int, DeviceProfile | TracedDevice],
    initial: ArrayRecord,
    evaluator: CentralEvaluator,
    train_config: ConfigRecord,
    on_step: Callable[[RoundRecord], None] | None = None,
) -> AsyncRun:
    """Run ``cfg.rounds`` FedBuff steps of ``compressed``'s inner strategy over ``grid``."""
    settings = mode_settings(cfg)
    try:
        aggregator = FedBuffAggregator(compressed, settings, initial, train_config, grid.get_node_ids())
        fleet = SimulatedFleet(grid, devices, int(cfg.seed), settings.availability_slot_s, float(cfg.device.start_hour))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spent = [0.0]

    def step_done(record: RoundRecord) -> None:
        """Give each step the joules of the work launched since the previous one."""
        if record.round > 0:
            record.energy_j, spent[0] = fleet.energy_j - spent[0], fleet.energy_j
        if on_step is not None:
            on_step(record)

    result = run_async_federation(
        aggregator, fleet, evaluator, int(cfg.rounds), seed=int(cfg.seed), traffic=grid.traffic,
        on_step=step_done, stop_accuracy=settings.stop_accuracy,
    )
    section = result.async_report(aggregator)
    section["energy_j"] = fleet.energy_j
    return AsyncRun(result, fleet, section)

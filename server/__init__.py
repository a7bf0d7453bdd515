"""fedge.server: the coordinator (round driver, grids, central evaluation, metrics)."""

from fedge.server.federation import FederationResult, RoundRecord, run_federation
from fedge.server.grid import FedgeGrid

__all__ = ["FedgeGrid", "FederationResult", "RoundRecord", "run_federation"]

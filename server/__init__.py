"""fedge.server: the coordinator (round driver, grids, central evaluation, metrics)."""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "server")

from fedge.server.federation import FederationResult, RoundRecord, run_federation
from fedge.server.grid import FedgeGrid

__all__ = ["FedgeGrid", "FederationResult", "RoundRecord", "run_federation"]

"""fedge.simulations: one-machine federations (``fedge-sim``), partitioning, backends."""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "simulations")

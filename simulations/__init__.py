"""fedge.simulations: one-machine federations (``fedge-sim``), partitioning, backends."""

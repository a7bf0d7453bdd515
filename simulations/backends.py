"""From the ``backend`` config group to a running Grid: ``local``, ``ray`` or ``grpc``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config checks read BACKENDS without importing the Grids
    from fedge.server.grid import FedgeGrid
    from fedge.simulations.clients import ClientRecipe

#: Backend names ``backend.name`` accepts.
BACKENDS = ("local", "ray", "grpc")


def make_grid(cfg: Any, recipe: ClientRecipe, strategy: Any) -> FedgeGrid:
    """The Grid ``cfg.backend`` (a :class:`~fedge.conf.schema.BackendConfig`) describes."""
    backend = cfg.backend
    if backend.name == "grpc":  # real gRPC: fedge-client processes on loopback
        from fedge.simulations.grpc_backend import grpc_grid

        return grpc_grid(cfg, recipe, strategy)
    if backend.name == "local":
        from fedge.simulations.local_grid import LocalGrid

        return LocalGrid(recipe, backend.num_workers, backend.threads_per_worker)
    if backend.name == "ray":
        from fedge.simulations.ray_grid import RayGrid

        return RayGrid(
            recipe,
            num_actors=backend.num_actors,
            address=backend.address,
            cpus_per_actor=backend.cpus_per_actor,
            threads_per_actor=backend.threads_per_worker,
        )
    raise ValueError(f"backend.name {backend.name!r} is not one of {BACKENDS}")

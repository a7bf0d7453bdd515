"""``fedge-sim``: the command line of one-machine federations.

The application itself (what a run composes, checks and runs) is
:mod:`fedge.simulations.sim_app`; this module is the console script's entry point and
imports nothing else until it has made one decision: whether to start the workers' fork
server (:mod:`fedge.simulations.fork_server`) *before* Hydra is imported and the command
line composed and checked.

Why before: the fork server's ``import torch`` is the longest step before round 1, and
the server process's Hydra import, compose and checks (~0.9 s of CPU) would otherwise
come first, on the critical path. Started first, the fork server imports torch on the
second core while this process composes. That is a guess made from the command line
alone: it is made only for a plain run of the default backend (every argument an
override, none of them ``backend``); ``--help``, ``--cfg``, any other flag and any
``backend`` override take the usual path (the fork server starts once the configuration
passed its checks, and only where the run needs it). When the guess was wrong (a refused
configuration), the fork server finishes its imports and exits with this process: the
error is printed as fast as without it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fedge.simulations import fork_server


def starts_fork_server_early(args: Sequence[str]) -> bool:
    """Whether command line ``args`` (without the program name) is a plain run of the
    default ``backend=local`` with workers: no flag, no ``backend`` override."""
    return all(not arg.startswith("-") and not arg.lstrip("+~").startswith("backend") for arg in args)


def main() -> None:
    """Console entry point (``fedge-sim``): overrides are checked before anything runs."""
    if starts_fork_server_early(sys.argv[1:]):
        fork_server.start_fork_server(with_main=False)
    from fedge.conf.cli import run
    from fedge.simulations.sim_app import APP

    run(APP)


if __name__ == "__main__":
    main()

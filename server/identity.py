"""Process identity that Flower's strategies need outside a Flower runtime.

Strategies build instruction messages with ``Message(content, dst_node_id, ...)``,
which reads ``flwr.supercore.task_identity.TaskIdentity`` (run, node and task ids).
Flower's own runtimes set it; fedge's grids run strategies without those runtimes,
so they set it here. This is a Flower-internal API: ``tests/test_flower_contract.py``
fails loudly when a Flower upgrade moves it.
"""

from __future__ import annotations

from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

#: Run id fedge uses for a federation (there is one run per process).
DEFAULT_RUN_ID = 1


def ensure_task_identity(run_id: int = DEFAULT_RUN_ID) -> None:
    """Set Flower's process-global identity to the coordinator of run ``run_id``."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = run_id

"""fedge.tasks: what is learned. A task = data loader, model factory, loss, metrics."""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "tasks")

from fedge.tasks.base import FederatedTask, Split, TaskData, evaluate

__all__ = ["FederatedTask", "Split", "TaskData", "evaluate"]

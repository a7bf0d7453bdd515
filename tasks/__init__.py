"""fedge.tasks: what is learned. A task = data loader, model factory, loss, metrics."""

from fedge.tasks.base import FederatedTask, Split, TaskData, evaluate

__all__ = ["FederatedTask", "Split", "TaskData", "evaluate"]

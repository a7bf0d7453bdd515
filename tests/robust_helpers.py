"""Hand-made replies and one aggregation round for the robust-rule tests."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedge.server.identity import ensure_task_identity
from fedge.strategies.delta_aggregation import DeltaAggregation


def reply(node: int, weights: np.ndarray, examples: int = 10) -> Message:
    """A train reply from ``node`` (as a Grid delivers it) carrying ``weights`` as array ``w``."""
    content = RecordDict({"arrays": ArrayRecord({"w": Array(weights.astype(np.float32))}), "metrics": MetricRecord({"num-examples": examples})})
    ensure_task_identity()
    instruction = Message(RecordDict(), node, "train")
    return Message(content, reply_to=instruction)  # from ``node``, as a Grid's reply


def aggregate(strategy: DeltaAggregation, replies: list[Message], start: np.ndarray, server_round: int = 1) -> np.ndarray:
    """Round ``server_round`` of ``strategy`` from the global model ``start`` (array ``w``) over ``replies``: the new ``w``."""

    class _Grid:
        def get_node_ids(self) -> list[int]:
            return [m.metadata.src_node_id for m in replies]

    strategy.configure_train(server_round, ArrayRecord({"w": Array(start.astype(np.float32))}), ConfigRecord(), _Grid())  # type: ignore[arg-type]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    assert arrays is not None
    return arrays["w"].numpy()

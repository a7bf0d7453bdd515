"""The largest Update the server accepts for a Task, from its model and its round's codec.

A device's push is refused at its first chunk when the header announces more bytes
than this, so a device can never make the server buffer more than a real answer
would take. The bound is measured, not guessed: a sample delta of the task's model
(the tensors' names, shapes and dtypes, as the Task carries them; standard normal
values) is encoded with the round's uplink plan (``fedge.codec*`` keys of the Task's
config) exactly as a device would, and the answer may be twice that size (codecs
whose output depends on the values, such as top-k index coding, vary a little) plus
an envelope for the task id, node id and metrics. An evaluation Task's answer
carries metrics only: the envelope alone. One encoding per distinct (shapes, plan)
is kept, so a round of 1,000 tasks costs one. A secure-aggregation train Task's answer is
a masked vector of at most 32 bits per coordinate, whatever the codec: fp32 sizes it.
"""

from __future__ import annotations

import numpy as np

from fedge.protos import config_values
from fedge.protos.codecs import CodecError, encode_update
from fedge.protos.codecs.dtypes import from_wire
from fedge.protos.codecs.plan import UplinkPlan
from fedge.protos.secagg import REQUEST_KEY as SECAGG_KEY
from fedge.protos.v1 import task_pb2
from fedge.protos.v1 import tensor_pb2 as pb

#: The answer may be this many times the sample encoding's size.
SLACK = 2
#: Extra bytes per tensor (name, shape and codec fields).
PER_TENSOR_BYTES = 256


class UpdateCeiling:
    """Largest acceptable Update size per Task, cached per model layout and uplink plan.

    Parameters
    ----------
    envelope_bytes:
        Bytes allowed on top of the encoded model delta (ids, metrics).
    hard_limit_bytes:
        Never more than this, whatever the model (the server's ``max_update_bytes``).
    """

    def __init__(self, envelope_bytes: int, hard_limit_bytes: int) -> None:
        self.envelope_bytes = envelope_bytes
        self.hard_limit_bytes = hard_limit_bytes
        self._cache: dict[tuple, int] = {}

    def __call__(self, task: task_pb2.Task) -> int:
        """Bytes the answer to ``task`` may take."""
        if task.kind != "train":
            return min(self.envelope_bytes, self.hard_limit_bytes)
        config = config_values.from_wire(task.config)
        if SECAGG_KEY in config:  # a masked vector: up to 32 bits a coordinate, whatever the codec; fp32 bounds it
            config = {}
        layout = tuple((t.name, tuple(t.shape), t.dtype) for t in task.model.tensors)
        key = (layout, tuple(sorted((k, str(v)) for k, v in config.items() if k.startswith("fedge."))))
        if key not in self._cache:
            self._cache[key] = self._measure(layout, config)
        return min(self._cache[key], self.hard_limit_bytes)

    def _measure(self, layout: tuple, config: dict) -> int:
        rng = np.random.default_rng(0)
        sample: dict[str, np.ndarray] = {}
        for name, shape, dtype in layout:
            try:
                kind = from_wire(dtype)
            except CodecError:
                kind = np.dtype(np.float64)  # the widest: an unknown dtype is refused later anyway
            sample[name] = (
                rng.standard_normal(shape).astype(kind) if np.issubdtype(kind, np.floating) else np.zeros(shape, kind)
            )
        try:
            plan = UplinkPlan.from_config(config)
            encoded = encode_update(
                sample, plan.codec, pb.UPDATE_KIND_DELTA, fallback=plan.fallback, dense_below=plan.dense_below
            ).ByteSize()
        except (CodecError, ValueError):  # a plan devices cannot follow either: the dense fp64 size bounds it
            encoded = sum(a.size * 8 for a in sample.values())
        return SLACK * encoded + PER_TENSOR_BYTES * len(layout) + self.envelope_bytes

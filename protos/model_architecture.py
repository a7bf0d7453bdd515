"""The Task config key that carries the model's architecture (structured pruning).

When the server's structured pruning has changed the global model's architecture,
every Task (train and evaluate) carries, under :data:`ARCHITECTURE_KEY`, the layer spec
of the model it holds as JSON text (:func:`fedge.tasks.shaping.architecture.to_json`).
A device whose model differs rebuilds it from that spec before decoding the weights,
and resets the state it kept for the old shapes (error-feedback residual, codec state,
the downlink-delta base) with a recorded reason. Absent: the task's own model.

Part of the wire contract: the server's strategy wrapper and the device both import it.
"""

from __future__ import annotations

#: Config key of a Task whose model is not the task's own: the model's layer spec, JSON text.
ARCHITECTURE_KEY = "fedge.architecture"
#: Metric a device's reply carries (1.0) in the round it rebuilt its model and dropped its uplink state.
RESET_METRIC = "uplink_state_reset"

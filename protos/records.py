"""Names of the records fedge puts into Flower Messages (shared by server and grids).

A train/evaluate instruction carries the encoded global model as bytes under
``MODEL_RECORD`` (a ConfigRecord, key ``PAYLOAD``) next to the round's ``config``;
a train reply carries the encoded update under ``UPDATE_RECORD`` and its metrics
under ``METRICS_RECORD``; a secure-aggregation stage's reply travels under ``SECAGG_RECORD``.
"""

MODEL_RECORD = "fedge.model"
UPDATE_RECORD = "fedge.update"
PAYLOAD = "payload"
METRICS_RECORD = "metrics"
CONFIG_RECORD = "config"
SECAGG_RECORD = "fedge.secagg"

#: Round-config key (bool) with which a server that sends downlink deltas tells devices to
#: keep the model they receive (the base of the next delta); absent or false, a device
#: keeps no copy of it.
DOWNLINK_DELTA_KEY = "fedge.downlink-delta"

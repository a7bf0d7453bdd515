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

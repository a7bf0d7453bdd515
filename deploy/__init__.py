"""The deployable model: a finished run's global model as ONNX fp32 and int8 (``fedge-export``).

Neither the device's trainer (``fedge.client``, whose core must not depend on onnx) nor
the federation server: this is the hand-off from a run to an inference runtime on the
device (ONNX Runtime), installed with the ``export`` extra.
"""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "deploy")

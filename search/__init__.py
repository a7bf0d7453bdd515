"""The hardware-aware search (``fedge-search``): architecture and training knobs under a device budget.

Each trial is a real federation (:func:`fedge.simulations.experiment.run_experiment`),
its final model exported to ONNX int8 and checked in ONNX Runtime
(:func:`fedge.deploy.export_cli.export_run`), its peak training memory counted, and
its device latency estimated; a trial over the device profile's flash, training-RAM or
latency budget is infeasible. Above ``simulations`` and ``deploy`` because a trial needs
both a federation and an export.
"""

from fedge._one_name import require_fedge_name

require_fedge_name(__name__, "search")

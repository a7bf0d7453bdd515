"""The numpy training runtime: a device trains without torch (``fedge-client --runtime numpy``).

Built from a task's layer spec (:mod:`fedge.tasks.layer_spec`), with the torch
runtime's state names, round semantics and reply metrics, so the server cannot tell
the two apart. Imports only numpy, fedge.protos and fedge.tasks' torch-free modules.

Modules: ``layers`` (forward/backward of each layer), ``network`` (a spec'd model,
checkpointing), ``lsq`` (quantisation-aware training), ``memory`` (bytes kept for
backward), ``training`` (SGD round, evaluation), ``trainer`` (what EdgeClient calls).
"""

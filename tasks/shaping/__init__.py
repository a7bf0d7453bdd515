"""Model shaping: make a task's model smaller in structure (pure torch + numpy, no flwr).

* :mod:`.lowrank`: truncated-SVD factorisation of Linear and Conv layers;
* :mod:`.magnitude`: unstructured magnitude pruning (masks, schedule, devices keep zeros);
* :mod:`.distillation`: a student's loss against a teacher's soft targets;
* :mod:`.checkpoint`: start from a saved model (transfer, new head, frozen backbone);
* :mod:`.shaped_task`: a :class:`~fedge.tasks.base.FederatedTask` whose model is shaped.
"""

"""Training and scoring on datasets.

* ``train`` — the ``Trainer``: a run assembled from the named steps of ``parts`` (process and device,
  data and split, augmentation, model and fine-tuning, optimiser, schedule, loss), the epoch loop,
  checkpoints, metrics and ``--resume``;
* ``loader`` — seeded data loading (the same batches for the same seed and epoch, in one process or a
  torchrun job), read one batch ahead;
* ``distributed`` (torchrun, the device), ``ema`` (weight averaging), ``mix`` (point CutMix), ``allocator``
  (the process's malloc settings), ``plots`` (learning curves, confusion matrices);
* ``evaluate`` — predictions with test-time votes, accuracy figures and their files (validation and
  ``pcsym evaluate``); ``unknown`` — calibrating the "unknown" detector a run stores in best.pt.

Imports from: foundations, geometry, data, models, inference.
"""

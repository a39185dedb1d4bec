"""Inference: a trained model applied to files.

* ``predict`` — ``load_classifier`` for every kind of model file (shipped name, numpy export, TorchScript,
  checkpoint) and classifying meshes and clouds, one or thousands;
* ``runtime`` — the torch-free numpy forward pass of a ``.npz`` export (the shipped models' fast path);
* ``export`` — writing TorchScript, ONNX and numpy exports.

``predict`` and ``runtime`` import no torch: ``pcsym classify`` with a shipped model starts in well under a
second. Scoring whole datasets (``evaluate``) is in ``pcsym.training``, beside the validation it shares.

Imports from: foundations, geometry, data, models.
"""

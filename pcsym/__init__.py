"""pcsym: symmetry-aware point-cloud classification with implicit steerable kernels.

The package in layers, each importing only from the ones before it (docs/architecture.md; the
"Imports from:" line of every subpackage's docstring, checked by tests/test_layout.py):

* foundations, the modules here: ``errors`` (one-line user errors), ``files`` (atomic writes, the user
  cache folder), ``config`` (every setting of a model and of a run), ``seeds`` (every random stream's
  seed, derived in one place);
* ``geometry``: kNN, farthest-point orders and normals on point clouds, in numpy, torch and C;
* ``data``: reading meshes and point clouds, datasets and their cache, splits, augmentations, downloads;
* ``models``: the network (symmetry groups, equivariant layers, the classifier), checkpoints and the
  shipped models, equivariance checks;
* ``inference``: classifying files with any model, the torch-free numpy runtime, exports;
* ``training``: the trainer and its parts, evaluation, the "unknown" detector's calibration;
* ``cli``: the ``pcsym`` command, one module per command.

Imports from: nothing.
"""

__version__ = "0.1.0"

"""Data: from files on disk to the clouds a model takes.

* readers — ``meshes`` (OFF, OBJ, PLY, STL meshes and point-cloud files, surface sampling, ``load_cloud``),
  with ``plyfile``, ``stlfile`` and ``parseutil`` (our own audited parsers: a bad file is refused in one line);
* datasets — ``datasets`` (the ModelNet layouts and folders per class, the ``.npz`` cache), ``fetch``
  (downloads), ``splits`` (the one train/val/test split), ``transforms`` (augmentations and the torch dataset).

Nothing here imports torch at module level but ``datasets``; ``meshes`` and ``transforms`` serve the
torch-free ``classify``.

Imports from: foundations, geometry.
"""

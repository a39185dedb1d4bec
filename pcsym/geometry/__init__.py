"""Graph operations on point clouds: k nearest neighbours, farthest-point and seeded sampling orders,
PCA normals and frames.

* ``numpy_graph`` — in numpy alone (the torch-free ``classify``, the mesh readers); the one normal estimate;
* ``graph`` — in torch, the same operations batched for the network (kNN in cache-sized blocks);
* ``frames`` — the six PCA-frame views of a cloud (frame averaging, ``--frames pca``), in numpy; the torch
  twin in ``graph`` reads the same view tables;
* ``native`` — the compiled C kernels both use where they are built (kNN, farthest-point sampling, and the
  implicit kernel's per-edge MLP and neighbour sum for :mod:`pcsym.models.fused`).

Imports from: foundations.
"""

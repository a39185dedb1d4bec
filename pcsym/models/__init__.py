"""The network: what a model is made of, and how it is saved.

* ``groups`` — the symmetry groups (one row each) and their escnn objects;
* ``linear``, ``layers``, ``fused`` — equivariant linear maps, layers (nonlinearity, batch norm, harmonic
  embedding, the implicit and basis convolutions; ``contraction`` is the h ⊗ f contraction they share,
  ``basis`` the fast basis kernel) and the compiled kernels' autograd glue; ``cache`` keeps
  what escnn derives for a layer on disk;
* ``classifier`` — the classifier (steerable blocks, pooling, head), built from a ``ModelConfig``;
* ``shards`` — one batch in shards on threads (the batch norms take whole-batch statistics);
* ``checkpoint`` — saving, reading and loading models, the shipped models of ``pcsym/pretrained/``
  (resolving a shipped name imports no torch);
* ``equivariance`` — the numerical equivariance check of a model.

Imports from: foundations, geometry, data.
"""

"""Sparse vectors, the typed hand-off from the model to the engines, and their pruning.

- :mod:`~milco_os.vectors.sparse`: :class:`~milco_os.vectors.sparse.SparseVector`
  (the ``pivot`` and ``echo`` views) and :class:`~milco_os.vectors.sparse.SparseView`;
- :mod:`~milco_os.vectors.pruning`: per-text pruning rules (``topk``, ``mass``,
  ``threshold``) and the pruning each model is best indexed with.
"""

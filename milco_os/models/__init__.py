"""Sparse models: one contract, one registry, every family beside it.

- :mod:`~milco_os.models.base`: the :class:`SparseModel` contract, the shared pooling
  math and the decoder-bias tie;
- :mod:`~milco_os.models.files`: reading and writing model folders;
- :mod:`~milco_os.models.milco`, :mod:`~milco_os.models.splade`,
  :mod:`~milco_os.models.echo_llm`: the MILCO, English SPLADE and echo-LLM families;
- :mod:`~milco_os.models.registry`: ``model_type`` and names (``milco-small``) to a
  loaded model (:func:`~milco_os.models.registry.load_sparse_model`);
- :mod:`~milco_os.models.named`: named models assembled from PyPI wheels and the
  trained parts in ``milco_small/``; :mod:`~milco_os.models.e5_q4` reads the 4-bit
  e5-small encoder;
- :mod:`~milco_os.models.presets`, :mod:`~milco_os.models.echo_presets`: random
  models for tests and benchmarks.
"""

"""What an index is built from, and what it must match to be written or searched.

- :mod:`~milco_os.index.spec`: declarative ingest specs (``ingest/<index>.yaml``);
- :mod:`~milco_os.index.compatibility`: the check of an index's ``_meta`` against
  the model, views and pruning in use.

The index mapping itself is built by :mod:`milco_os.engines.mappings`.
"""

"""Text in: the first step of the pipeline, before any model.

- :mod:`~milco_os.text.corpus`: documents streamed from local files or hub datasets,
  a bad record reported and skipped;
- :mod:`~milco_os.text.passages`: long documents split into token-window passages.
"""

"""The flows that run text through a model into an engine, and queries back out.

- :mod:`~milco_os.pipeline.ingest`: corpus records -> passages -> sparse vectors ->
  engine documents, sent in bulk (:class:`~milco_os.pipeline.ingest.Ingestor`);
- :mod:`~milco_os.pipeline.documents`: the engine document of one passage;
- :mod:`~milco_os.pipeline.search`: texts -> query vectors -> hits, and why a hit
  matched (:class:`~milco_os.pipeline.search.Searcher`).
"""

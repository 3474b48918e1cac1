"""milco-os: multilingual learned sparse retrieval (MILCO) inside OpenSearch and Elasticsearch.

Text flows one way: text -> tokens -> model -> sparse vectors -> pruning ->
engine documents and queries. Each arrow is one module:

- :mod:`milco_os.sparse`: :class:`SparseVector` / :class:`SparseView`, the typed hand-off;
- :mod:`milco_os.connection`: cluster URL, credentials and TLS;
- :mod:`milco_os.cluster`: a real local OpenSearch for tests and users.
"""

from milco_os.sparse import SparseVector, SparseView

__version__ = "0.1.0"
__all__ = ["SparseVector", "SparseView", "__version__"]

"""Index and search over a run's output: a faiss index built part by part and searched with the
corpus's engine (`faiss_index.py`), and exact search over token-level outputs with no index
(`late_search.py`). May import output/ (manifest, parts) and `workers`' public names."""
from .faiss_index import BINARY_KINDS, KINDS, Corpus, Index, build, import_faiss

__all__ = ["BINARY_KINDS", "KINDS", "Corpus", "Index", "build", "import_faiss"]

"""Index and search over a run's output: a faiss index built part by part and searched with the
corpus's engine (`faiss_index.py`), a Lance dataset with an IVF-PQ index on disk or object
storage for corpora past one machine's memory (`lance_index.py`, kind="lance"), both reading
the output through `corpus.py`, and exact search over token-level outputs with no index
(`late_search.py`). May import output/ (manifest, parts) and `workers`' public names."""
from .corpus import Corpus
from .faiss_index import BINARY_KINDS, KINDS, Index, build, import_faiss
from .lance_index import LanceIndex, import_lance

__all__ = ["BINARY_KINDS", "KINDS", "Corpus", "Index", "LanceIndex", "build", "import_faiss", "import_lance"]

"""Input processors: user items -> token ids (single text, pair, reranker prompt, windows of a
long text, a multi-vector query/document side). May import loading/ (folder layouts) only.
"""

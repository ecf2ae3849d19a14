"""Per-token flags an input processor may set for token-level heads (uint8, one per token).

    KEEP        the head emits this token's vector (a multi-vector document drops its
                skip-list tokens: punctuation)
    QUERY_ONLY  the token attends to the others but no token attends to it (ColBERT query
                expansion with `attend: false`: the [MASK] pads read the query, the query never
                reads them)

A processor that sets no flags leaves `Tokenized.flags` None: every token is kept and attended.
The input builder turns them into the packed batch's `keep` / `attended` masks (T,) bool.
"""
KEEP = 1
QUERY_ONLY = 2

"""Real all-mpnet-base-v2 (rebuilt by `make models`) against sentence-transformers on real
passages, fp32: every text's cosine >= 0.99999. Skips when the folder was not built."""
import os
from pathlib import Path

import numpy as np
import pytest

MPNET = Path(os.environ.get("PREFILL_EMBED_MODELS", Path(__file__).resolve().parents[2] / ".models")) \
    / "all-mpnet-base-v2"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MPNET / "model.safetensors").is_file(),
                       reason=f"{MPNET} not found: run `make models` to rebuild all-mpnet-base-v2"),
]


def test_engine_matches_sentence_transformers_on_real_passages():
    import torch
    from sentence_transformers import SentenceTransformer

    from pipeline.inputs.samples import sample_passages
    from workers import Engine, EngineConfig

    texts = sample_passages(50, seed=3)
    engine = Engine(EngineConfig(model=str(MPNET), device="cpu", dtype="float32"))
    ours = engine.embed(texts)
    st = SentenceTransformer(str(MPNET), device="cpu")
    with torch.inference_mode():
        ref = st.encode(texts, batch_size=16, convert_to_numpy=True)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"min cosine {cos.min():.8f}, max |diff| {np.abs(ours - ref).max():.2e}")
    assert engine.dim == 768 and engine.resolved.pooling == "mean" and engine.resolved.normalize
    assert cos.min() >= 0.99999, (cos.argmin(), ours[cos.argmin(), :4], ref[cos.argmin(), :4])

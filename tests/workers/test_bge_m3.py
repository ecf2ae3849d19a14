"""task="bge-m3": dense, sparse and multi-vector outputs from one forward, against the published
FlagEmbedding BGE-M3 formulas written as a plain padded torch reference, on a tiny random
XLMRobertaModel with random `colbert_linear` / `sparse_linear` heads saved beside it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from tiny_models import ROBERTA_CORPUS, make_tiny_bge_m3
from workers import Engine, EngineConfig

TEXTS = ROBERTA_CORPUS[:3] + ["", "the the the dog dog", ROBERTA_CORPUS[3] * 6]
MAX_LEN = 48


def reference(folder, model, colbert_linear, sparse_linear, texts):
    """BGEM3FlagModel's encode: padded batch, CLS dense, relu(sparse_linear) max per token id
    without cls/eos/pad/unk, colbert_linear on tokens after CLS times the mask, normalized."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state                                    # (B, L, H)
        dense = F.normalize(h[:, 0], dim=-1)
        weights = torch.relu(sparse_linear(h)).squeeze(-1)                    # (B, L)
        colbert = colbert_linear(h[:, 1:]) * enc["attention_mask"][:, 1:, None].float()
        colbert = F.normalize(colbert, dim=-1)
    unused = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    sparse, vecs = [], []
    for b in range(len(texts)):
        best: dict[int, float] = {}
        for w, idx in zip(weights[b].tolist(), enc["input_ids"][b].tolist()):
            if idx not in unused and w > 0 and w > best.get(idx, 0.0):
                best[idx] = w
        keys = sorted(best)
        sparse.append((np.array(keys, np.int32), np.array([best[k] for k in keys], np.float32)))
        vecs.append(colbert[b, : int(enc["attention_mask"][b].sum()) - 1].numpy())
    return dense.numpy(), sparse, vecs


@pytest.fixture(scope="module")
def m3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bge-m3")
    return folder, *make_tiny_bge_m3(folder)


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="bge-m3", max_length=MAX_LEN,
                               **{"dtype": "float32", "allow_pickle": True, **kwargs}))


def test_three_outputs_match_the_reference(m3):
    folder, model, colbert_linear, sparse_linear = m3
    dense, sparse, colbert = reference(folder, model, colbert_linear, sparse_linear, TEXTS)
    engine = _engine(folder)
    out = engine.embed_m3(TEXTS)
    assert out["dense"].shape == (len(TEXTS), 32) and out["dense"].dtype == np.float32
    d_dense = float(np.abs(out["dense"] - dense).max())
    d_sparse, d_colbert = 0.0, 0.0
    for (gi, gv), (wi, wv) in zip(out["sparse"], sparse):
        np.testing.assert_array_equal(gi, wi)
        d_sparse = max(d_sparse, float(np.abs(gv - wv).max(initial=0.0)))
    for g, w in zip(out["colbert"], colbert):
        assert g.shape == w.shape
        d_colbert = max(d_colbert, float(np.abs(g - w).max()))
    print(f"bge-m3 fp32 max abs diff: dense {d_dense:.2e} sparse {d_sparse:.2e} colbert {d_colbert:.2e}")
    assert max(d_dense, d_sparse, d_colbert) <= 1e-5
    assert sum(len(i) for i, _ in out["sparse"]) > 10       # the comparison has weights to compare
    assert len(out["sparse"][4][0]) <= 2                    # "the", "dog": one weight per id
    assert out["colbert"][0].shape[1] == 16 and engine.stats.truncated == 1


def test_pickle_heads_are_refused_without_allow_pickle(m3):
    with pytest.raises(ValueError, match="colbert_linear.pt is a pickle file.*allow_pickle=True"):
        _engine(m3[0], allow_pickle=False)


def test_safetensors_heads_load_without_pickle(tmp_path, m3):
    folder = tmp_path / "m3"
    model, colbert_linear, sparse_linear = make_tiny_bge_m3(folder, pickle=False)
    got = _engine(folder, allow_pickle=False).embed_m3(TEXTS[:2])
    dense, _, colbert = reference(folder, model, colbert_linear, sparse_linear, TEXTS[:2])
    np.testing.assert_allclose(got["dense"], dense, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["colbert"][1], colbert[1], atol=1e-5, rtol=0)


def test_missing_heads_name_the_files(tmp_path, m3):
    folder = tmp_path / "m3"
    make_tiny_bge_m3(folder)
    (folder / "sparse_linear.pt").unlink()
    with pytest.raises(FileNotFoundError, match="sparse_linear.safetensors nor sparse_linear.pt"):
        _engine(folder)


def test_a_text_alone_equals_it_in_a_packed_batch(m3):
    engine = _engine(m3[0])
    batch = engine.embed_m3(TEXTS)
    assert engine.stats.batches == 1
    for j, text in enumerate(TEXTS):
        alone = engine.embed_m3([text])
        np.testing.assert_allclose(alone["dense"][0], batch["dense"][j], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(alone["sparse"][0][0], batch["sparse"][j][0])
        np.testing.assert_allclose(alone["sparse"][0][1], batch["sparse"][j][1], atol=1e-6, rtol=0)
        np.testing.assert_allclose(alone["colbert"][0], batch["colbert"][j], atol=1e-6, rtol=0)


def test_both_execute_loops_give_the_same_outputs(m3):
    small = dict(max_num_batched_tokens=MAX_LEN)
    simple = _engine(m3[0], execute_loop="simple", **small).embed_m3(TEXTS * 2)
    engine = _engine(m3[0], execute_loop="double_buffer", **small)
    double = engine.embed_m3(TEXTS * 2)
    np.testing.assert_array_equal(simple["dense"], double["dense"])
    for a, b in zip(simple["sparse"], double["sparse"]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert all(np.array_equal(a, b) for a, b in zip(simple["colbert"], double["colbert"]))
    assert engine.stats.batches > 2

"""task="score" on a Qwen3ForCausalLM folder: the Qwen3-Reranker workflow (prompt template, last
token, two LM-head rows) against transformers' Qwen3ForCausalLM full logits over the same prompt."""
import numpy as np
import pytest
import torch

from tiny_decoders import make_tiny_decoder, write_bpe_tokenizer
from workers import Engine, EngineConfig
from workers.inputs.reranker_input import DEFAULT_INSTRUCTION, PREFIX, SUFFIX

PAIRS = [
    ("what is a vector index", "a vector index stores embeddings for dense retrieval"),
    ("capital of france", "paris is the capital of france"),
    ("capital of france", "the quick brown fox jumps over the lazy dog"),
    ("a", "retrieval " * 300),                                       # far over max_length
    ("ünïcödé query 🙂", ""),
]
MAX_LEN = 160
CORPUS = [PREFIX + SUFFIX, "yes", "no", "yes no yes no"] + [f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}" for q, d in PAIRS[:3]]


SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _folder(path, **kwargs):
    make_tiny_decoder(path, "Qwen3Model", causal_lm=True, **kwargs)
    write_bpe_tokenizer(path, CORPUS * 20, vocab_size=600, special_tokens=SPECIALS)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("qwen3-reranker"))


def _reference(folder, pairs, instruction=DEFAULT_INSTRUCTION):
    """The published recipe: prefix + tokenizer(template, truncation) + suffix; full LM logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").float().eval()
    prefix = tok.encode(PREFIX, add_special_tokens=False)
    suffix = tok.encode(SUFFIX, add_special_tokens=False)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    scores = []
    for q, d in pairs:
        text = f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}"
        mid = tok(text, truncation=True, max_length=MAX_LEN - len(prefix) - len(suffix))["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix + mid + suffix])).logits[0, -1]   # (V,)
        scores.append(torch.log_softmax(logits[[no, yes]], -1)[1].exp().item())
    return np.array(scores, dtype=np.float32)


def _engine(folder, **kwargs):
    return Engine(EngineConfig(model=str(folder), task="score", max_length=MAX_LEN,
                               **{"dtype": "float32", **kwargs}))


def test_scores_match_transformers_causal_lm(folder):
    engine = _engine(folder)
    assert engine.workflow.name == "llm_reranker" and engine.builder.causal
    got, want = engine.score(PAIRS), _reference(folder, PAIRS)
    diff = float(np.abs(got - want).max())
    print(f"Qwen3 reranker float32: max abs diff {diff:.2e}")
    assert diff <= 1e-5, (got, want)
    assert np.ptp(want) > 1e-3 and engine.stats.truncated == 1
    assert tuple(engine.head.weight.shape) == (2, engine.folder.hf_config.hidden_size)  # two rows only


def test_bfloat16_close(folder):
    diff = float(np.abs(_engine(folder, dtype="bfloat16").score(PAIRS) - _reference(folder, PAIRS)).max())
    print(f"Qwen3 reranker bfloat16: max abs diff {diff:.2e}")
    assert diff <= 2e-2


def test_custom_instruction_and_fingerprint(folder):
    engine = _engine(folder, prompt="Judge relevance")
    np.testing.assert_allclose(engine.score(PAIRS[:3]), _reference(folder, PAIRS[:3], "Judge relevance"), atol=1e-5)
    fp = engine.fingerprint()
    assert (fp["task"], fp["workflow"], fp["instruction"]) == ("score", "llm_reranker", "Judge relevance")
    assert "prompt" not in fp


def test_pair_alone_equals_pair_in_batch_and_both_loops(folder):
    simple = _engine(folder, max_num_batched_tokens=MAX_LEN * 2)
    double = _engine(folder, max_num_batched_tokens=MAX_LEN * 2, execute_loop="double_buffer")
    batch = simple.score(PAIRS)
    np.testing.assert_array_equal(double.score(PAIRS), batch)
    alone = np.array([simple.score([p])[0] for p in PAIRS])
    np.testing.assert_allclose(alone, batch, atol=1e-6)
    docs = [d for _, d in PAIRS]
    scores = simple.score([("capital of france", d) for d in docs])
    ranked = simple.rerank("capital of france", docs)
    assert [i for i, _ in ranked] == sorted(range(len(docs)), key=lambda i: (-scores[i], i))


def test_tied_embeddings_take_the_rows_from_embed_tokens(tmp_path):
    _folder(tmp_path, tie_word_embeddings=True, seed=3)
    assert "lm_head.weight" not in __import__("safetensors").safe_open(
        str(tmp_path / "model.safetensors"), "pt").keys()
    got = _engine(tmp_path).score(PAIRS)
    np.testing.assert_allclose(got, _reference(tmp_path, PAIRS), atol=1e-5)


def test_activation_is_refused(folder):
    with pytest.raises(ValueError, match="activation='sigmoid' does not apply to the llm_reranker"):
        _engine(folder, activation="sigmoid")

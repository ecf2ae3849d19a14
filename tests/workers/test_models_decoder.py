"""Packed Qwen2/Qwen3/Llama/Mistral against transformers on the same random weights: hidden
states, last-token and mean pooling, GQA, rope scaling, *ForCausalLM checkpoints, bidirectional
attention (flag or folder), prompts with skip_instruction, batch invariance and order."""
import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from tiny_decoders import CONFIGS, ROPE_SCALINGS, hf_hidden, make_tiny_decoder, write_bpe_tokenizer
from workers import Engine, EngineConfig
from workers.engine.scheduler import Request

TEXTS = ["hello world", "", "a much longer sentence, with punctuation; and numbers 12345!",
         "Ünïcödé — 日本語のテキスト 🙂", "x " * 90]
ATOL = 1e-4


def _engine(folder, **kw) -> Engine:
    """A CPU engine (the tests compare with transformers on the CPU, whatever the machine has)."""
    return Engine(EngineConfig(model=str(folder), device="cpu", dtype=kw.pop("dtype", "float32"),
                               normalize=False, **kw))


def _reference(hf, engine, texts, pooling, bidirectional=False, starts=None):
    """transformers one text at a time (no padding), pooled by hand from `starts` (mean)."""
    out = []
    for i, ids in enumerate(engine.processor(texts).ids):
        h = hf_hidden(hf, ids, bidirectional)
        out.append(h[-1] if pooling == "last" else h[(starts[i] if starts else 0):].mean(0))
    return torch.stack(out).numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_tiny_decoder(folder, request.param)


def test_hidden_states_match_transformers_on_a_packed_batch(tiny):
    arch, folder, hf = tiny
    cfg = hf.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    engine = _engine(folder, attention_backend="sdpa")
    ids = engine.processor(TEXTS).ids
    batch = engine.builder.build([Request(i, x) for i, x in enumerate(ids)])
    with torch.inference_mode():
        hidden = engine.model(batch.input_ids, batch.positions, None, batch.attn, engine.backend)
    cu = batch.attn.cu_seqlens.tolist()
    for i, x in enumerate(ids):
        torch.testing.assert_close(hidden[cu[i]:cu[i + 1]], hf_hidden(hf, x), atol=ATOL, rtol=0)


def test_last_token_pooling_is_the_default_and_matches(tiny):
    arch, folder, hf = tiny
    engine = _engine(folder)
    assert (engine.workflow.name, engine.resolved.pooling) == ("decoder", "last")
    ours = engine.embed(TEXTS)
    np.testing.assert_allclose(ours, _reference(hf, engine, TEXTS, "last"), atol=ATOL, rtol=0)


def test_mean_pooling_matches(tiny):
    arch, folder, hf = tiny
    engine = _engine(folder, pooling="mean")
    np.testing.assert_allclose(engine.embed(TEXTS), _reference(hf, engine, TEXTS, "mean"), atol=ATOL)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_causal_lm_checkpoint_loads_without_its_head(tmp_path, arch):
    hf = make_tiny_decoder(tmp_path, arch, causal_lm=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" in f.keys() and "model.norm.weight" in f.keys()
    engine = _engine(tmp_path)
    assert engine.folder.architecture == arch.replace("Model", "ForCausalLM")
    np.testing.assert_allclose(engine.embed(TEXTS), _reference(hf, engine, TEXTS, "last"), atol=ATOL)


@pytest.mark.parametrize("arch,scaling", [("LlamaModel", "linear"), ("LlamaModel", "dynamic"),
                                          ("LlamaModel", "llama3"), ("Qwen2Model", "yarn"),
                                          ("Qwen3Model", "linear")])
def test_rope_scaling_variants_match(tmp_path, arch, scaling):
    hf = make_tiny_decoder(tmp_path, arch, rope_scaling=dict(ROPE_SCALINGS[scaling]))
    engine = _engine(tmp_path)
    texts = TEXTS + ["word " * 120]  # longer than the scaled configs' original context
    np.testing.assert_allclose(engine.embed(texts), _reference(hf, engine, texts, "last"), atol=ATOL)


def test_bidirectional_flag_matches_transformers_with_a_full_mask(tiny):
    arch, folder, hf = tiny
    engine = _engine(folder, enable_bidirectional=True)
    assert (engine.workflow.name, engine.resolved.pooling) == ("decoder_bidirectional", "mean")
    assert engine.builder.causal is False
    ref = _reference(hf, engine, TEXTS, "mean", bidirectional=True)
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=ATOL)
    naive = _engine(folder, enable_bidirectional=True, attention_backend="naive")
    np.testing.assert_allclose(naive.embed(TEXTS), ref, atol=ATOL)
    causal = _reference(hf, engine, TEXTS, "mean")
    assert np.abs(ref - causal).max() > 1e-3  # the flag really changed the attention


def test_is_causal_false_in_config_json_makes_it_bidirectional(tmp_path):
    hf = make_tiny_decoder(tmp_path, "Qwen2Model", extra_config={"is_causal": False})
    engine = _engine(tmp_path)
    assert engine.workflow.name == "decoder_bidirectional"
    np.testing.assert_allclose(engine.embed(TEXTS), _reference(hf, engine, TEXTS, "mean", True), atol=ATOL)
    forced = _engine(tmp_path, enable_bidirectional=False)  # the flag overrides the folder
    assert forced.workflow.name == "decoder"
    np.testing.assert_allclose(forced.embed(TEXTS), _reference(hf, forced, TEXTS, "last"), atol=ATOL)


def test_llm2vec_folder_is_bidirectional_mean_and_skips_the_instruction(tmp_path):
    hf = make_tiny_decoder(tmp_path, "MistralModel")
    (tmp_path / "llm2vec_config.json").write_text(json.dumps(
        {"pooling_mode": "mean", "max_length": 64, "doc_max_length": 48, "skip_instruction": True}))
    engine = _engine(tmp_path, prompt="Retrieve passages: ")
    r = engine.resolved
    assert (engine.workflow.name, r.pooling, r.max_length, r.skip_instruction) == \
        ("decoder_bidirectional", "mean", 64, True)
    starts = _hand_starts(tmp_path, "Retrieve passages: ", TEXTS, 64)
    ref = _reference(hf, engine, TEXTS, "mean", bidirectional=True, starts=starts)
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=ATOL)


def _hand_starts(folder, prompt, texts, max_length):
    """[CLS] plus the prompt's own tokens, capped so at least one token is pooled."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    n = 1 + len(tok(prompt, add_special_tokens=False)["input_ids"])
    lens = [len(tok(prompt + t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    return [min(n, L - 1) for L in lens]


def test_prompt_and_skip_instruction_mean_excludes_the_prompt(tiny):
    arch, folder, hf = tiny
    prompt = "Instruct: find the answer\nQuery: "
    engine = _engine(folder, prompt=prompt, pooling="mean", skip_instruction=True)
    ids = engine.processor(["hello"]).ids[0]
    hand = AutoTokenizer.from_pretrained(str(folder))(prompt + "hello")["input_ids"]
    assert ids.tolist() == hand  # the prompt is prepended before tokenizing
    starts = _hand_starts(folder, prompt, TEXTS, engine.resolved.max_length)
    ref = _reference(hf, engine, TEXTS, "mean", starts=starts)
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=ATOL)
    with_prompt = _engine(folder, prompt=prompt, pooling="mean")
    np.testing.assert_allclose(with_prompt.embed(TEXTS), _reference(hf, engine, TEXTS, "mean"), atol=ATOL)
    assert engine.fingerprint()["prompt"] == prompt and engine.fingerprint()["skip_instruction"]


def test_tokenizer_without_special_tokens_and_a_prompt_merging_into_the_text(tmp_path):
    """Byte-level BPE (no BOS/EOS): the prompt's trailing space merges into the first text token
    ('Ġhello'), which must count as text. Hand rule: prompt tokens lie wholly inside the prompt."""
    hf = make_tiny_decoder(tmp_path, "Qwen3Model")
    prompt = "Instruct: find the answer\nQuery: "
    write_bpe_tokenizer(tmp_path, TEXTS * 5 + [prompt + "hello world"] * 5)
    texts = [t for t in TEXTS if t]
    engine = _engine(tmp_path, prompt=prompt, pooling="mean", skip_instruction=True)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    starts = []
    for text in texts:
        enc = tok(prompt + text, return_offsets_mapping=True, truncation=True,
                  max_length=engine.resolved.max_length)
        starts.append(sum(end <= len(prompt) for _, end in enc["offset_mapping"]))
    ids = engine.processor(texts).ids
    assert [x.tolist() for x in ids] == [tok(prompt + t)["input_ids"] for t in texts]  # no specials
    assert engine.processor(texts).pool_starts == starts
    np.testing.assert_allclose(engine.embed(texts), _reference(hf, engine, texts, "mean", starts=starts),
                               atol=ATOL)
    last = _engine(tmp_path, prompt=prompt)
    np.testing.assert_allclose(last.embed(texts), _reference(hf, last, texts, "last"), atol=ATOL)


def test_named_prompts_and_include_prompt_from_sentence_transformers_files(tmp_path):
    hf = make_tiny_decoder(tmp_path, "Qwen3Model")
    (tmp_path / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": ""}, "default_prompt_name": None}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": True, "include_prompt": False}))
    query = _engine(tmp_path, prompt_name="query")
    assert (query.resolved.prompt, query.resolved.skip_instruction) == ("query: ", True)
    starts = _hand_starts(tmp_path, "query: ", TEXTS, query.resolved.max_length)
    np.testing.assert_allclose(query.embed(TEXTS), _reference(hf, query, TEXTS, "mean", starts=starts),
                               atol=ATOL)
    assert _engine(tmp_path, prompt_name="document").resolved.prompt == ""
    with pytest.raises(ValueError, match=r"prompt_name='passage' is not among.*\['document', 'query'\]"):
        _engine(tmp_path, prompt_name="passage")


def test_text_alone_equals_text_in_a_packed_batch_and_order_is_kept(tiny):
    arch, folder, _ = tiny
    rng = random.Random(0)
    texts = [" ".join(["word"] * rng.randint(1, 60)) + f" {i}" for i in range(40)]
    engine = _engine(folder, max_num_batched_tokens=256, max_num_seqs=5)
    ours = engine.embed(texts)
    assert engine.stats.batches > 5
    for i in (0, 17, 39):
        np.testing.assert_allclose(engine.embed([texts[i]])[0], ours[i], atol=1e-5)
    perm = list(range(len(texts)))
    rng.shuffle(perm)
    np.testing.assert_allclose(engine.embed([texts[i] for i in perm]), ours[perm], atol=1e-5)


def test_bf16_close_to_float32(tiny):
    _, folder, _ = tiny
    ref = _engine(folder).embed(TEXTS)
    ours = _engine(folder, dtype="bfloat16").embed(TEXTS)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos


def test_sliding_window_caps_max_length(tmp_path):
    make_tiny_decoder(tmp_path, "MistralModel")  # sliding_window=128 < 256 positions
    assert _engine(tmp_path).resolved.max_length == 128
    with pytest.raises(ValueError, match="max_length=200 exceeds"):
        _engine(tmp_path, max_length=200)


def test_missing_gqa_shard_is_named(tmp_path):
    make_tiny_decoder(tmp_path, "Qwen2Model")
    path = tmp_path / "model.safetensors"
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    tensors.pop("layers.1.self_attn.k_proj.weight")
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=r"missing 1 \['layers.1.self_attn.qkv_proj.weight#1'\]"):
        _engine(tmp_path)


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": "q: ", "prompt_name": "query"}, "both given"),
    ({"skip_instruction": True, "pooling": "last"}, "reads the last token only"),
    ({"enable_bidirectional": "yes"}, "enable_bidirectional='yes' must be True, False or None"),
])
def test_config_rejects_bad_prompt_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EngineConfig(**kwargs)


def test_resolution_errors_name_the_fix(tmp_path):
    make_tiny_decoder(tmp_path, "LlamaModel")
    with pytest.raises(ValueError, match="skip_instruction=True changes which tokens.*'last'"):
        _engine(tmp_path, skip_instruction=True)
    with pytest.raises(ValueError, match="leaving no room under max_length=8"):
        _engine(tmp_path, prompt="a rather long instruction " * 3, max_length=8)
    with pytest.raises(ValueError, match="enable_bidirectional=False.*bidirectional encoder"):
        Engine(EngineConfig(device="cpu", enable_bidirectional=False))  # the bundled MiniLM encoder
    make_tiny_decoder(tmp_path / "rope", "LlamaModel")
    cfg = json.loads((tmp_path / "rope" / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8,
                              "long_factor": [1.0] * 8, "original_max_position_embeddings": 64}
    (tmp_path / "rope" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_type='longrope' is not supported"):
        _engine(tmp_path / "rope")

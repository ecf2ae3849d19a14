"""Our packed BERT/RoBERTa/XLM-R against transformers' own forward on the same random weights."""
import numpy as np
import pytest
import torch

from tiny_models import CONFIGS, copy_tokenizer, make_tiny_model, write_sentence_transformers_files
from workers import Engine, EngineConfig

TEXTS = ["hello world", "", "a much longer sentence, with punctuation; and numbers 12345!",
         "Ünïcödé — 日本語のテキスト 🙂", "x " * 60]


def _reference(hf_model, engine, texts, pooling):
    """transformers, one text at a time (no padding), pooled by hand."""
    out = []
    for ids in engine.processor(texts).ids:
        with torch.no_grad():
            hidden = hf_model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0]
        out.append(hidden[0] if pooling == "cls" else hidden.mean(0))
    return torch.stack(out).numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_tiny_model(folder, request.param)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooled_output_matches_transformers(tiny, pooling):
    arch, folder, hf_model = tiny
    engine = Engine(EngineConfig(model=str(folder), dtype="float32", pooling=pooling, normalize=False))
    ours = engine.embed(TEXTS)
    ref = _reference(hf_model, engine, TEXTS, pooling)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert engine.folder.architecture == arch


def test_hidden_states_match_transformers_on_a_packed_batch(tiny):
    arch, folder, hf_model = tiny
    engine = Engine(EngineConfig(model=str(folder), dtype="float32", attention_backend="sdpa"))
    requests = engine.processor(TEXTS).ids
    from workers.engine.scheduler import Request
    batch = engine.builder.build([Request(i, ids) for i, ids in enumerate(requests)])
    with torch.inference_mode():
        hidden = engine.model(batch.input_ids, batch.positions, batch.token_type_ids, batch.attn,
                              engine.backend)
    cu = batch.attn.cu_seqlens.tolist()
    for i, ids in enumerate(requests):
        with torch.no_grad():
            ref = hf_model(input_ids=torch.from_numpy(ids)[None]).last_hidden_state[0]
        torch.testing.assert_close(hidden[cu[i]:cu[i + 1]], ref, atol=1e-5, rtol=0)


def test_bf16_close_to_float32(tiny):
    _, folder, _ = tiny
    ref = Engine(EngineConfig(model=str(folder), dtype="float32", pooling="mean")).embed(TEXTS)
    ours = Engine(EngineConfig(model=str(folder), dtype="bfloat16", pooling="mean")).embed(TEXTS)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999, cos


def test_task_prefix_and_unused_head_tensors_load(tmp_path):
    hf = make_tiny_model(tmp_path, "BertModel", prefix="bert.",
                         extra_tensors={"cls.predictions.bias": torch.zeros(30522)})
    engine = Engine(EngineConfig(model=str(tmp_path), dtype="float32", pooling="cls"))
    np.testing.assert_allclose(engine.embed(TEXTS[:1]), _reference(hf, engine, TEXTS[:1], "cls"), atol=1e-5)


def test_missing_tensor_is_named(tmp_path):
    make_tiny_model(tmp_path, "BertModel", drop="encoder.layer.1.attention.self.key.weight")
    with pytest.raises(ValueError, match=r"missing 1 \['encoder.layer.1.attention.self.qkv.weight#1'\]"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_unexpected_tensor_is_named(tmp_path):
    make_tiny_model(tmp_path, "BertModel", extra_tensors={"encoder.layer.0.surprise": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected 1 \['encoder.layer.0.surprise'\]"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_sentence_transformers_files_set_defaults(tmp_path):
    hf = make_tiny_model(tmp_path, "BertModel")
    write_sentence_transformers_files(tmp_path, pooling="mean", normalize=True, max_len=16)
    engine = Engine(EngineConfig(model=str(tmp_path), dtype="float32"))
    r = engine.resolved
    assert (r.pooling, r.normalize, r.max_length) == ("mean", True, 16)
    ref = _reference(hf, engine, TEXTS, "mean")
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(engine.embed(TEXTS), ref, atol=1e-5)
    assert engine.stats.truncated == 2  # the two texts over 16 tokens


def test_unknown_architecture_lists_supported(tmp_path):
    make_tiny_model(tmp_path, "BertModel")
    cfg = (tmp_path / "config.json").read_text().replace('"BertModel"', '"GPT2Model"')
    (tmp_path / "config.json").write_text(cfg)
    # "native" refuses what the registry lacks; "auto" would hand it to the transformers fallback.
    with pytest.raises(ValueError, match="GPT2Model.*not supported.*XLMRobertaModel"):
        Engine(EngineConfig(model=str(tmp_path), implementation="native"))


def test_pickle_weights_refused(tmp_path):
    make_tiny_model(tmp_path, "BertModel")
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle weights.*safetensors"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_folder_without_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Engine(EngineConfig(model=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Engine(EngineConfig(model=str(tmp_path)))
    CONFIGS["BertModel"]().save_pretrained(tmp_path)
    copy_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_shape_mismatch_names_tensor(tmp_path):
    make_tiny_model(tmp_path, "BertModel")
    cfg = (tmp_path / "config.json").read_text().replace('"intermediate_size": 64', '"intermediate_size": 48')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match=r"intermediate.dense.(weight|bias) has shape.*config.json does not match"):
        Engine(EngineConfig(model=str(tmp_path)))


def test_relu_activation_fused_path(tmp_path):
    torch.manual_seed(1)
    make_tiny_model(tmp_path, "BertModel")
    cfg = (tmp_path / "config.json").read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"')
    (tmp_path / "config.json").write_text(cfg)
    from transformers import AutoModel
    hf = AutoModel.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    engine = Engine(EngineConfig(model=str(tmp_path), dtype="float32", pooling="mean"))
    np.testing.assert_allclose(engine.embed(TEXTS), _reference(hf, engine, TEXTS, "mean"), atol=1e-5)

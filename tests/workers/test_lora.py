"""LoRA adapters (workers/loading/lora.py): a random PEFT adapter merged at load equals PEFT's own
`merge_and_unload()` model, on a tiny Qwen3 (q/k/v and gate/up fused here) and a tiny BERT
(query/key/value fused into qkv), natively and through the transformers fallback."""
import json
import shutil

import numpy as np
import pytest
import torch

peft = pytest.importorskip("peft")

from tiny_decoders import hf_hidden, make_tiny_decoder  # noqa: E402
from tiny_models import LONG_TEXTS, hf_pooled, make_tiny_model  # noqa: E402
from workers import Engine, EngineConfig  # noqa: E402

TEXTS = LONG_TEXTS
DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BERT_TARGETS = ["query", "key", "value", "dense"]


def _adapter(base, out, targets, seed=1, **kw):
    """A random LoRA on `base` (B not zero, so the delta is real), saved as PEFT does; returns
    PEFT's merged model."""
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **kw)
    model = peft.get_peft_model(base, cfg)
    model.save_pretrained(str(out))
    return model.merge_and_unload().eval()


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from transformers import AutoModelForCausalLM
    root = tmp_path_factory.mktemp("lora")
    folder = root / "qwen3-tiny"
    make_tiny_decoder(folder, "Qwen3Model", causal_lm=True)
    base = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    merged = _adapter(base, root / "adapter", DECODER_TARGETS)
    return folder, root / "adapter", merged.model


def _engine(folder, **kw):
    kw = {"device": "cpu", "dtype": "float32", "normalize": False, **kw}
    return Engine(EngineConfig(model=str(folder), **kw))


def test_decoder_lora_equals_peft_merge_and_unload(qwen3):
    folder, adapter, merged = qwen3
    engine = _engine(folder, lora=str(adapter))
    ours = engine.embed(TEXTS)                                            # last-token pooling
    ids = [engine.processor.tokenizer(t)["input_ids"] for t in TEXTS]
    ref = np.stack([hf_hidden(merged, i)[-1].numpy() for i in ids])
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    plain = _engine(folder).embed(TEXTS)
    assert np.abs(plain - ours).max() > 1e-2                             # the adapter changed something
    assert len(engine.fingerprint()["lora"]) == 16 and "lora" not in _engine(folder).fingerprint()


def test_decoder_lora_through_the_fallback(qwen3):
    folder, adapter, _ = qwen3
    native = _engine(folder, lora=str(adapter)).embed(TEXTS)
    forced = _engine(folder, lora=str(adapter), implementation="transformers").embed(TEXTS)
    np.testing.assert_allclose(forced, native, atol=1e-5, rtol=0)


def test_other_base_model_is_an_error_naming_both(qwen3, tmp_path):
    folder, adapter, _ = qwen3
    shutil.copytree(adapter, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "Qwen/Qwen3-0.6B"}))
    with pytest.raises(ValueError, match=f"trained on 'Qwen/Qwen3-0.6B'.*{folder.name}"):
        _engine(folder, lora=str(tmp_path / "a"))


def test_adapter_of_other_shapes_is_an_error(qwen3, tmp_path):
    from transformers import AutoModelForCausalLM
    folder, _, _ = qwen3
    other = tmp_path / "qwen3-tiny"                                        # same name, other shapes
    make_tiny_decoder(other, "Qwen3Model", causal_lm=True, head_dim=16)
    _adapter(AutoModelForCausalLM.from_pretrained(str(other)), tmp_path / "a", DECODER_TARGETS)
    with pytest.raises(ValueError, match=r"delta of shape .* has .*belongs to another model"):
        _engine(folder, lora=str(tmp_path / "a"))


def test_missing_adapter_files_and_unsupported_kinds(qwen3, tmp_path):
    folder, adapter, _ = qwen3
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        _engine(folder, lora=str(tmp_path))
    shutil.copytree(adapter, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        _engine(folder, lora=str(tmp_path / "a"))


@pytest.mark.parametrize("rslora", [False, True])
def test_bert_lora_on_fused_qkv_equals_peft(tmp_path, rslora):
    from transformers import AutoModel
    folder = tmp_path / "bert-tiny"
    make_tiny_model(folder, "BertModel")
    base = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    merged = _adapter(base, tmp_path / "adapter", BERT_TARGETS, use_rslora=rslora)
    engine = _engine(folder, lora=str(tmp_path / "adapter"), pooling="mean")
    ids = [engine.processor.tokenizer(t)["input_ids"] for t in TEXTS]
    np.testing.assert_allclose(engine.embed(TEXTS), hf_pooled(merged, ids, "mean"), atol=1e-5, rtol=0)
    forced = _engine(folder, lora=str(tmp_path / "adapter"), pooling="mean", implementation="transformers")
    np.testing.assert_allclose(forced.embed(TEXTS), hf_pooled(merged, ids, "mean"), atol=1e-5, rtol=0)


def test_lora_is_validated():
    with pytest.raises(ValueError, match="lora=3"):
        EngineConfig(lora=3)

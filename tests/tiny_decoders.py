"""Tiny random-weight decoder folders (Qwen2, Qwen3, Llama, Mistral) for tests, plus the
transformers reference forward (causal, or bidirectional through a full 4-D attention mask).

Shapes use grouped-query attention (4 query heads, 2 KV heads); Qwen3 has a head_dim that is not
hidden/heads; Llama carries attention and MLP biases; Mistral a sliding window below its
position limit. The tokenizer is the bundled MiniLM one (it adds [CLS]/[SEP]; fine for parity;
for model_type qwen2 transformers 5 forces its Qwen2Tokenizer, which reads that vocabulary as a
BPE without merges: character-level ids, equally fine), or a byte-level BPE trained on the spot.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (AutoModel, AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)

from tiny_models import copy_tokenizer

_SHAPE = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256,
              rms_norm_eps=1e-6, tie_word_embeddings=False)
CONFIGS = {
    "Qwen2Model": lambda **kw: Qwen2Config(**{**_SHAPE, "rope_theta": 1e6, **kw}),
    "Qwen3Model": lambda **kw: Qwen3Config(**{**_SHAPE, "head_dim": 24, **kw}),
    "LlamaModel": lambda **kw: LlamaConfig(**{**_SHAPE, "attention_bias": True, "mlp_bias": True,
                                              "rope_theta": 5e5, **kw}),
    "MistralModel": lambda **kw: MistralConfig(**{**_SHAPE, "sliding_window": 128, **kw}),
}
ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}


def _randomize(model: torch.nn.Module) -> None:
    """Non-trivial norms and biases, so a mis-loaded or ignored tensor shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)


def make_tiny_decoder(folder: Path, arch: str, seed: int = 0, causal_lm: bool = False,
                      extra_config: dict | None = None, **config_kwargs):
    """Write a random `arch` (or its *ForCausalLM form) to `folder`; return transformers' base
    model (eval, fp32, eager attention) on the same weights."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CONFIGS[arch](**config_kwargs)
    config.architectures = [arch.replace("Model", "ForCausalLM") if causal_lm else arch]
    auto = AutoModelForCausalLM if causal_lm else AutoModel
    model = auto.from_config(config, attn_implementation="eager").eval()
    _randomize(model)
    config.save_pretrained(folder)
    if extra_config:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, **extra_config}))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:  # as transformers saves it: the head is embed_tokens
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(folder / "model.safetensors"))
    copy_tokenizer(folder)
    return model.model if causal_lm else model


def write_bpe_tokenizer(folder: Path, texts: list[str], vocab_size: int = 2000,
                        special_tokens: tuple[str, ...] = ("<|endoftext|>",)) -> None:
    """Replace the folder's tokenizer with a byte-level BPE trained on `texts`: Qwen-like, it
    adds no special tokens at all (no BOS/CLS, no EOS); `special_tokens` (e.g. the chat
    markers <|im_start|> <|im_end|>) are single tokens never split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    for name in ("vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def hf_hidden(model, ids, bidirectional: bool = False) -> torch.Tensor:
    """transformers' last hidden states for one unpadded sequence: (L,) ids -> (L, hidden)."""
    input_ids = torch.as_tensor(ids)[None]
    kwargs = {}
    if bidirectional:  # a 4-D additive mask is used as-is: zeros = every token sees every token
        L = input_ids.shape[1]
        kwargs["attention_mask"] = torch.zeros(1, 1, L, L)
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).last_hidden_state[0]

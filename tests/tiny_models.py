"""Tiny random-weight model folders for tests: an HF config, safetensors weights from
transformers' own model, and the tokenizer files of the bundled MiniLM package."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModel, BertConfig, RobertaConfig, XLMRobertaConfig

from workers.loading.model_folder import default_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_SHAPE = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CONFIGS = {
    "BertModel": lambda: BertConfig(**_SHAPE, max_position_embeddings=128, type_vocab_size=2),
    "RobertaModel": lambda: RobertaConfig(**_SHAPE, max_position_embeddings=130, type_vocab_size=1,
                                          pad_token_id=1, hidden_act="gelu_new"),
    "XLMRobertaModel": lambda: XLMRobertaConfig(**_SHAPE, max_position_embeddings=130,
                                                type_vocab_size=1, pad_token_id=1),
}


def copy_tokenizer(folder: Path) -> None:
    src = default_model_path()
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)


def make_tiny_model(folder: Path, arch: str, seed: int = 0, prefix: str = "",
                    extra_tensors: dict | None = None, drop: str | None = None):
    """Write a random `arch` model to `folder`; return the transformers model (eval, fp32)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config.architectures = [arch]
    model = AutoModel.from_config(config, attn_implementation="eager").eval()
    # Random, non-trivial LayerNorm and bias values, so a mis-loaded tensor shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    config.save_pretrained(folder)
    tensors = {prefix + k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith(("position_ids", "token_type_ids"))}
    tensors.update(extra_tensors or {})
    if drop:
        tensors.pop(drop)
    save_file(tensors, str(folder / "model.safetensors"))
    copy_tokenizer(folder)
    return model


def write_sentence_transformers_files(folder: Path, pooling: str, normalize: bool, max_len: int):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
         "pooling_mode_mean_tokens": pooling == "mean"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))


# Words for the RoBERTa-style test tokenizer (and the texts the classifier tests feed it).
ROBERTA_CORPUS = [
    "what is a vector index and how does dense retrieval find passages",
    "a cross encoder reads the query and the passage together and scores them",
    "the quick brown fox jumps over the lazy dog near the river bank",
    "embeddings map text to vectors so that similar meanings land close together",
    "rerankers sort the retrieved documents by relevance to the question",
]


def write_roberta_tokenizer(folder: Path, texts: list[str] = ROBERTA_CORPUS, vocab_size: int = 600) -> None:
    """A real RoBERTa-style fast tokenizer: byte-level BPE with <s> <pad> </s> <unk> <mask> (ids
    0-4, pad 1 as RoBERTa) and a RobertaProcessing post-processor, so a pair is
    `<s> a </s></s> b </s>`. Saved as tokenizer.json + tokenizer_config.json (AutoTokenizer
    loads it as a fast tokenizer that, like RoBERTa's, returns no token type ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    for name in ("vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0),
                                                      trim_offsets=True, add_prefix_space=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "model_max_length": 128,
        "model_input_names": ["input_ids", "attention_mask"]}))


def make_tiny_classifier(folder: Path, arch: str, num_labels: int = 1, seed: int = 0,
                         labels: list[str] | None = None):
    """Write a random `*ForSequenceClassification` folder (BERT: the MiniLM tokenizer with token
    type ids; RoBERTa/XLM-R: `write_roberta_tokenizer`); return transformers' model (eval)."""
    from transformers import AutoModelForSequenceClassification
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CONFIGS[arch.replace("ForSequenceClassification", "Model")]()
    config.architectures = [arch]
    config.num_labels = num_labels
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if p.dim() == 2:  # larger weights: the first token's state depends on the input
                p.mul_(10.0)
            if "classifier" in name or "pooler" in name:  # logits of order 1, so scores spread
                p.normal_(0.0, 0.3)
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if not k.endswith(("position_ids", "token_type_ids"))}, str(folder / "model.safetensors"))
    if arch.startswith("Bert"):
        copy_tokenizer(folder)
    else:
        write_roberta_tokenizer(folder)
    return model


# --- encoders with their own bodies (MPNet, DistilBERT, ModernBERT) and Gemma3 ----------------

def _randomize_norms_and_biases(model: torch.nn.Module, big: tuple[str, ...] = ()) -> None:
    """Non-trivial norms and biases (so a mis-loaded tensor shows); parameters whose name holds
    one of `big` get unit-scale values (e.g. MPNet's relative bias, so it really matters)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(b in name for b in big):
                p.normal_(0.0, 1.0)
            elif name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)


def save_tiny(folder: Path, config, seed: int = 0, big: tuple[str, ...] = (), prefix: str = "",
              auto=None):
    """Build transformers' model for `config` (eager attention, random weights), save it with the
    MiniLM tokenizer to `folder`; return it (eval, fp32)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = (auto or AutoModel).from_config(config, attn_implementation="eager").eval()
    _randomize_norms_and_biases(model, big)
    config.save_pretrained(folder)
    tensors = {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items()  # tied: own copies
               if not k.endswith(("position_ids", "token_type_ids"))}
    save_file(tensors, str(folder / "model.safetensors"))
    copy_tokenizer(folder)
    return model


def hf_pooled(hf_model, ids_list, pooling: str, **kwargs) -> "numpy.ndarray":
    """transformers one text at a time (no padding), pooled by hand: (n, hidden) float32."""
    out = []
    for ids in ids_list:
        with torch.no_grad():
            h = hf_model(input_ids=torch.as_tensor(ids)[None], **kwargs).last_hidden_state[0]
        out.append(h[0] if pooling == "cls" else h.mean(0))
    return torch.stack(out).float().numpy()


def assert_packed_hidden_match(engine, hf_model, texts, atol: float = 1e-5) -> None:
    """The engine's body over one packed batch of `texts` equals transformers' last hidden
    states of each text run alone (no padding), token for token."""
    from workers.engine.scheduler import Request
    ids = engine.processor(texts).ids
    batch = engine.builder.build([Request(i, x) for i, x in enumerate(ids)])
    with torch.inference_mode():
        hidden = engine.model(batch.input_ids, batch.positions, None, batch.attn, engine.backend)
    cu = batch.attn.cu_seqlens.tolist()
    for i, x in enumerate(ids):
        with torch.no_grad():
            ref = hf_model(input_ids=torch.as_tensor(x)[None]).last_hidden_state[0]
        torch.testing.assert_close(hidden[cu[i]:cu[i + 1]], ref, atol=atol, rtol=0)


def cosines(a, b):
    import numpy as np
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# Texts from empty to ~130 tokens: they cross sliding windows of 16-32 tokens and MPNet's
# logarithmic relative-position buckets.
LONG_TEXTS = ["hello world", "",
              "a much longer sentence, with punctuation; and numbers 12345!",
              "Ünïcödé — 日本語のテキスト 🙂",
              " ".join(f"word{i} and more" for i in range(20)),
              "embeddings map text to vectors so that similar meanings land close together " * 6]


def write_embeddinggemma_st_files(folder: Path, hidden: int, inner: int, seed: int = 0,
                                  max_len: int = 256) -> None:
    """EmbeddingGemma's sentence-transformers layout: mean pooling -> 2_Dense (hidden -> inner,
    no bias, identity) -> 3_Dense (inner -> hidden) -> Normalize, plus its query/document prompts."""
    g = torch.Generator().manual_seed(seed)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
               {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True, "include_prompt": True}))
    for name, (d_in, d_out) in (("2_Dense", (hidden, inner)), ("3_Dense", (inner, hidden))):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(json.dumps(
            {"in_features": d_in, "out_features": d_out, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}))
        w = torch.randn(d_out, d_in, generator=g) / d_in ** 0.5
        save_file({"linear.weight": w.contiguous()}, str(folder / name / "model.safetensors"))
    (folder / "4_Normalize").mkdir(exist_ok=True)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_len}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "task: search result | query: ", "document": "title: none | text: "},
         "default_prompt_name": None, "similarity_fn_name": "cosine"}))


def make_tiny_multi_vector(folder: Path, expansion: dict | None = None, bias: bool = False,
                           prompts: dict | None = None, seed: int = 0):
    """A sentence-transformers MultiVectorEncoder folder saved by sentence-transformers itself:
    a tiny random BERT -> token Dense (32 -> 24) -> MultiVectorMask (punctuation skip-list) ->
    Normalize, with query/document markers and optional query expansion; returns the encoder."""
    import string
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    base = folder.parent / (folder.name + "-base")
    make_tiny_model(base, "BertModel", seed=seed)
    transformer = Transformer(str(base), query_length=max(12, (expansion or {}).get("length", 0)),
                              document_length=20,
                              query_expansion=expansion)
    torch.manual_seed(seed + 1)
    dense = Dense(32, 24, bias=bias, activation_function=torch.nn.Identity(),
                  module_input_name="token_embeddings")
    model = MultiVectorEncoder(
        modules=[transformer, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                 Normalize(module_input_name="token_embeddings")],
        prompts=prompts if prompts is not None else {"query": "query: ", "document": "passage: "},
        device="cpu")
    model.save(str(folder))
    return model


def make_tiny_splade(folder: Path, seed: int = 0, pooling: dict | None = None):
    """A random BertForMaskedLM saved as a sentence-transformers SparseEncoder (MLM Transformer ->
    SpladePooling); returns the SparseEncoder."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import AutoModelForMaskedLM
    base = folder.parent / (folder.name + "-base")
    base.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CONFIGS["BertModel"]()
    config.architectures = ["BertForMaskedLM"]
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.cls.predictions.bias.normal_(-0.35, 0.1)   # most logits negative: a sparse output
    model.save_pretrained(base)
    copy_tokenizer(base)
    encoder = SparseEncoder(modules=[Transformer(str(base), transformer_task="fill-mask"),
                                     SpladePooling(**(pooling or {}))], device="cpu")
    encoder.save(str(folder))
    return encoder


def make_tiny_bge_m3(folder: Path, seed: int = 0, colbert_dim: int = 16, pickle: bool = True):
    """A tiny random XLMRobertaModel (RoBERTa-style tokenizer) with bge-m3's side heads saved
    as `colbert_linear.pt` / `sparse_linear.pt` (pickle=True) or `.safetensors`; returns
    (transformers model, colbert_linear, sparse_linear)."""
    model = make_tiny_model(folder, "XLMRobertaModel", seed=seed)
    write_roberta_tokenizer(folder)
    torch.manual_seed(seed + 1)
    colbert, sparse = torch.nn.Linear(32, colbert_dim), torch.nn.Linear(32, 1)
    for name, layer in (("colbert_linear", colbert), ("sparse_linear", sparse)):
        state = {k: v.contiguous() for k, v in layer.state_dict().items()}
        if pickle:
            torch.save(state, folder / f"{name}.pt")
        else:
            save_file(state, str(folder / f"{name}.safetensors"))
    return model, colbert.eval(), sparse.eval()

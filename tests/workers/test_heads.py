"""Heads against their formulas on tiny random tensors, and the activation a folder implies."""
import json

import pytest
import torch
from transformers import BertConfig, RobertaConfig

from attention import select_backend
from workers.heads.activation import ACTIVATIONS, cross_encoder_activation
from workers.heads.classifier_head import BertClassifierHead, RobertaClassifierHead, labels_of
from workers.engine.input_builder import InputBuilder
from workers.engine.scheduler import Request
from workers.heads.yes_no_head import YesNoHead

LENS = [3, 1, 4]


def _batch():
    import numpy as np
    backend = select_backend("naive", torch.device("cpu"), torch.float32)
    reqs = [Request(i, np.arange(n)) for i, n in enumerate(LENS)]
    return InputBuilder(backend, torch.device("cpu"), False, False).build(reqs)


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def _firsts_and_lasts(hidden):
    starts = torch.tensor([0, 3, 4])
    return hidden[starts], hidden[starts + torch.tensor(LENS) - 1]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_bert_head_is_classifier_of_tanh_pooler_of_cls(activation):
    cfg = BertConfig(hidden_size=8, num_labels=3)
    head = _randomize(BertClassifierHead(cfg, ACTIVATIONS[activation]))
    hidden = torch.randn(sum(LENS), 8)
    first, _ = _firsts_and_lasts(hidden)
    logits = torch.tanh(first @ head.pooler.dense.weight.T + head.pooler.dense.bias) @ head.classifier.weight.T \
        + head.classifier.bias
    torch.testing.assert_close(head(hidden, _batch()), ACTIVATIONS[activation](logits))
    assert {n for n, _ in head.named_parameters()} == {
        "pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_roberta_head_is_out_proj_of_tanh_dense_of_first_token():
    cfg = RobertaConfig(hidden_size=8, num_labels=1)
    head = _randomize(RobertaClassifierHead(cfg, ACTIVATIONS["sigmoid"]))
    hidden = torch.randn(sum(LENS), 8)
    first, _ = _firsts_and_lasts(hidden)
    c = head.classifier
    want = torch.sigmoid(torch.tanh(first @ c.dense.weight.T + c.dense.bias) @ c.out_proj.weight.T + c.out_proj.bias)
    torch.testing.assert_close(head(hidden, _batch()), want)
    assert {n for n, _ in head.named_parameters()} == {
        "classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"}


@pytest.mark.parametrize("tied,source", [(False, "lm_head.weight"), (True, "model.embed_tokens.weight")])
def test_yes_no_head_is_p_yes_at_the_last_token(tied, source):
    cfg = BertConfig(hidden_size=8, tie_word_embeddings=tied)
    head = _randomize(YesNoHead(cfg, (7, 3)))
    assert head.checkpoint_rows == {source: ("weight", [7, 3])}
    hidden = torch.randn(sum(LENS), 8)
    _, last = _firsts_and_lasts(hidden)
    yes, no = last @ head.weight[0], last @ head.weight[1]
    torch.testing.assert_close(head(hidden, _batch())[:, 0], torch.softmax(torch.stack([no, yes], 1), 1)[:, 1])


def _write(path, name, data):
    (path / name).write_text(json.dumps(data))


def test_cross_encoder_activation_follows_sentence_transformers_order(tmp_path):
    one, three = BertConfig(num_labels=1), BertConfig(num_labels=3)
    assert cross_encoder_activation(tmp_path, one) == "sigmoid"
    assert cross_encoder_activation(tmp_path, three) == "identity"
    _write(tmp_path, "config_sentence_transformers.json", {"activation_fn": "torch.nn.modules.activation.Softmax"})
    assert cross_encoder_activation(tmp_path, one) == "sigmoid"      # no modules.json: not read
    _write(tmp_path, "modules.json", [])
    assert cross_encoder_activation(tmp_path, one) == "softmax"
    _write(tmp_path, "config_sentence_transformers.json", {"activation_fn": "my_pkg.Custom"})
    legacy = BertConfig(num_labels=3, sbert_ce_default_activation_function="torch.nn.modules.activation.Sigmoid")
    assert cross_encoder_activation(tmp_path, legacy) == "sigmoid"   # untrusted path skipped
    _write(tmp_path, "config_sentence_transformers.json", {"activation_fn": "torch.nn.modules.activation.Tanh"})
    with pytest.raises(ValueError, match="Tanh.*not supported; pass activation="):
        cross_encoder_activation(tmp_path, one)


def test_labels_from_id2label():
    assert labels_of(BertConfig(id2label={0: "neg", 1: "pos"})) == ["neg", "pos"]
    assert labels_of(BertConfig(num_labels=2)) == ["LABEL_0", "LABEL_1"]

"""The workflow table: every workflow's modules, and the choice per (architecture, task)."""
import pytest

from workers.inputs.chunked_input import ChunkedInputProcessor
from workers.engine.execute_loop import EXECUTE_LOOPS
from workers.inputs.input_processor import TextInputProcessor
from workers.inputs.pair_input import PairInputProcessor
from workers.inputs.reranker_input import RerankerPromptProcessor
from workers.engine.scheduler import Scheduler
from workers.heads import bge_m3_head, splade_head, token_head
from workers.inputs.late_chunk_input import ChunkSpanProcessor
from workers.inputs.token_input import TokenInputProcessor
from workers.workflow import (BGE_M3, BIDIRECTIONAL_ONLY, DECODERS, ENCODERS, LLM_RERANKERS, SEQUENCE_CLASSIFIERS,
                              SPLADE_MLMS, WORKFLOWS,
                              dense_pooler, span_head, input_processor, select_workflow,
                              sequence_classification_head, supported, yes_no_head)

TEXT = {"truncate": TextInputProcessor, "error": TextInputProcessor, "chunk": ChunkedInputProcessor}
# name -> (task, architectures, inputs, head, output, causal, default pooling)
TABLE = {
    "encoder": ("embed", ENCODERS, TEXT, dense_pooler, "vector", False, "cls"),
    "decoder": ("embed", DECODERS, TEXT, dense_pooler, "vector", True, "last"),
    "decoder_bidirectional": ("embed", DECODERS | BIDIRECTIONAL_ONLY, TEXT, dense_pooler, "vector", False, "mean"),
    "cross_encoder": ("score", SEQUENCE_CLASSIFIERS, {"truncate": PairInputProcessor, "error": PairInputProcessor},
                      sequence_classification_head, "score", False, "cls"),
    "classifier": ("classify", SEQUENCE_CLASSIFIERS, {"truncate": TextInputProcessor, "error": TextInputProcessor},
                   sequence_classification_head, "logits", False, "cls"),
    "llm_reranker": ("score", LLM_RERANKERS, {"truncate": RerankerPromptProcessor, "error": RerankerPromptProcessor},
                     yes_no_head, "score", True, "last"),
    "token_embed": ("tokens", ENCODERS, {"truncate": TokenInputProcessor, "error": TokenInputProcessor},
                    token_head.build, "tokens", False, "all"),
    "splade": ("sparse", SPLADE_MLMS, {"truncate": TextInputProcessor, "error": TextInputProcessor},
               splade_head.build, "sparse", False, "max"),
    "bge_m3": ("bge-m3", BGE_M3, {"truncate": TextInputProcessor, "error": TextInputProcessor},
               bge_m3_head.build, "bge_m3", False, "cls"),
    "late_chunk": ("chunks", ENCODERS, {"truncate": ChunkSpanProcessor}, span_head, "chunks", False, "cls"),
    "decoder_late_chunk": ("chunks", DECODERS, {"truncate": ChunkSpanProcessor}, span_head, "chunks", True, "last"),
    "decoder_bidirectional_late_chunk": ("chunks", DECODERS | BIDIRECTIONAL_ONLY, {"truncate": ChunkSpanProcessor},
                                         span_head, "chunks", False, "mean"),
}


def test_every_workflow_is_the_module_set_the_table_names():
    assert set(WORKFLOWS) == set(TABLE)
    for name, (task, archs, inputs, head, output, causal, pooling) in TABLE.items():
        w = WORKFLOWS[name]
        assert (w.task, w.architectures, w.inputs, w.head, w.output, w.causal, w.default_pooling) == \
            (task, archs, inputs, head, output, causal, pooling), name
        assert w.scheduler is Scheduler and w.execute_loops == EXECUTE_LOOPS


def test_no_two_workflows_differ_only_by_a_flag_except_attention():
    """Rows sharing input processors, head and output may differ only in causality (the
    decoder pair, kept for the embedding fingerprints): anything else would be a flag."""
    rows = list(WORKFLOWS.values())
    for i, a in enumerate(rows):
        for b in rows[i + 1:]:
            if (a.inputs, a.head, a.output, a.task) == (b.inputs, b.head, b.output, b.task):
                assert {a.name, b.name} == {"decoder", "decoder_bidirectional"} or a.architectures != b.architectures


@pytest.mark.parametrize("arch,task,bidirectional,name", [
    ("BertModel", "embed", None, "encoder"),
    ("XLMRobertaModel", "embed", True, "encoder"),
    ("Qwen3ForCausalLM", "embed", None, "decoder"),
    ("Qwen2Model", "embed", True, "decoder_bidirectional"),
    ("MPNetModel", "embed", None, "encoder"),
    ("DistilBertForMaskedLM", "embed", None, "encoder"),
    ("ModernBertModel", "embed", None, "encoder"),
    ("Gemma3TextModel", "embed", None, "decoder_bidirectional"),
    ("BertForSequenceClassification", "score", None, "cross_encoder"),
    ("XLMRobertaForSequenceClassification", "classify", None, "classifier"),
    ("Qwen3ForCausalLM", "score", None, "llm_reranker"),
    ("BertModel", "tokens", None, "token_embed"),
    ("BertForMaskedLM", "sparse", None, "splade"),
    ("XLMRobertaModel", "bge-m3", None, "bge_m3"),
])
def test_select_workflow(arch, task, bidirectional, name):
    assert select_workflow(arch, task, bidirectional).name == name


@pytest.mark.parametrize("arch,task", [("BertModel", "score"), ("Qwen2ForCausalLM", "score"),
                                       ("Qwen3ForCausalLM", "classify"), ("BertForSequenceClassification", "embed")])
def test_unsupported_combination_names_both_and_the_supported_list(arch, task):
    with pytest.raises(ValueError) as e:
        select_workflow(arch, task)
    msg = str(e.value)
    assert f"{arch!r} with task={task!r} is not supported" in msg
    assert all(f"{a}/{t}" in msg for a, t in supported())


def test_attention_conflicts_and_inputs_per_truncation():
    with pytest.raises(ValueError, match="enable_bidirectional=False.*bidirectional encoder"):
        select_workflow("BertModel", "embed", False)
    with pytest.raises(ValueError, match="enable_bidirectional=True.*causal attention"):
        select_workflow("Qwen3ForCausalLM", "score", True)
    assert input_processor(WORKFLOWS["encoder"], "chunk") is ChunkedInputProcessor
    with pytest.raises(ValueError, match="truncation='chunk' is not supported by the cross_encoder"):
        input_processor(WORKFLOWS["cross_encoder"], "chunk")
    assert ("Qwen3ForCausalLM", "score") in supported() and ("Qwen2ForCausalLM", "score") not in supported()

"""Scheduler packing and the packed input builder, against hand-computed layouts."""
import numpy as np
import pytest
import torch

from attention import select_backend
from workers.engine.input_builder import InputBuilder
from workers.heads.pooling import Pooler
from workers.engine.scheduler import Request, Scheduler


def _reqs(lens):
    return [Request(i, np.arange(100, 100 + n)) for i, n in enumerate(lens)]


def test_packs_whole_requests_under_the_token_budget_and_puts_back():
    s = Scheduler(max_num_batched_tokens=10, max_num_seqs=8)
    s.add(_reqs([4, 5, 3, 10, 1, 1]))
    batches = []
    while len(s):
        batches.append([r.index for r in s.schedule()])
    assert batches == [[0, 1], [2], [3], [4, 5]]


def test_respects_max_num_seqs():
    s = Scheduler(max_num_batched_tokens=100, max_num_seqs=2)
    s.add(_reqs([1, 1, 1, 1, 1]))
    assert [len(s.schedule()) for _ in range(3)] == [2, 2, 1]
    assert s.schedule() == []


def test_rejects_request_over_budget_and_empty_request():
    s = Scheduler(max_num_batched_tokens=4, max_num_seqs=2)
    with pytest.raises(ValueError, match="request 0 has 5 tokens"):
        s.add(_reqs([5]))
    with pytest.raises(ValueError, match="request 0 has no tokens"):
        s.add(_reqs([0]))


@pytest.mark.parametrize("causal", [False, True])
def test_input_builder_layout(causal):
    backend = select_backend("sdpa", torch.device("cpu"), torch.float32)
    b = InputBuilder(backend, torch.device("cpu"), causal=causal, token_types=True).build(_reqs([3, 1, 2]))
    assert b.input_ids.tolist() == [100, 101, 102, 100, 100, 101]
    assert b.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert b.seq_ids.tolist() == [0, 0, 0, 1, 2, 2]
    assert b.attn.cu_seqlens.tolist() == [0, 3, 4, 6] and b.attn.max_seqlen == 3
    assert b.token_type_ids.tolist() == [0] * 6 and b.attn.causal is causal
    assert b.indices.tolist() == [0, 1, 2]


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
@pytest.mark.parametrize("normalize,dims", [(False, None), (True, None), (True, 3)])
def test_poolers_against_a_loop(pooling, normalize, dims):
    backend = select_backend("naive", torch.device("cpu"), torch.float32)
    lens = [3, 1, 4]
    batch = InputBuilder(backend, torch.device("cpu"), False, False).build(_reqs(lens))
    hidden = torch.randn(sum(lens), 5)
    out = Pooler(pooling, normalize, dims)(hidden, batch)
    start = 0
    for i, n in enumerate(lens):
        seq = hidden[start:start + n]
        start += n
        expect = {"cls": seq[0], "mean": seq.mean(0), "last": seq[-1]}[pooling][: dims or 5]
        if normalize:
            expect = expect / expect.norm()
        torch.testing.assert_close(out[i], expect)


def test_input_builder_carries_per_token_type_ids():
    backend = select_backend("sdpa", torch.device("cpu"), torch.float32)
    reqs = _reqs([3, 2, 2])
    reqs[0].type_ids = np.array([0, 1, 1])
    reqs[2].type_ids = np.array([0, 1])
    b = InputBuilder(backend, torch.device("cpu"), causal=False, token_types=True).build(reqs)
    assert b.token_type_ids.tolist() == [0, 1, 1, 0, 0, 0, 1]  # the middle request: all type 0
    none = InputBuilder(backend, torch.device("cpu"), causal=False, token_types=False).build(reqs)
    assert none.token_type_ids is None

"""Input processors, each against the Hugging Face tokenizer (the reference every model folder
ships): single texts, chunk windows, cross-encoder pairs, and the LLM-reranker prompt."""
import pytest
from transformers import AutoTokenizer

from tiny_decoders import write_bpe_tokenizer
from tiny_models import ROBERTA_CORPUS, write_roberta_tokenizer
from workers.inputs.chunked_input import ChunkedInputProcessor
from workers.inputs.chunking import combine_windows
from workers.inputs.input_processor import TextInputProcessor, TextTooLongError
from workers.loading.model_folder import default_model_path
from workers.inputs.pair_input import PairInputProcessor
from workers.inputs.reranker_input import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, RerankerPromptProcessor

MINILM = default_model_path()
WORDS = "retrieval augmented generation needs good passage embeddings "
PAIRS = [("what is a vector index", "the quick brown fox"), ("", ""), ("a", WORDS * 40),
         (WORDS * 30, "short"), (WORDS * 20, WORDS * 25), (WORDS * 25, WORDS * 20), (WORDS * 5, WORDS * 5)]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    folder = tmp_path_factory.mktemp("roberta-tok")
    write_roberta_tokenizer(folder, ROBERTA_CORPUS + [WORDS])
    return folder


def _hf_pairs(folder, pairs, max_length):
    """As CrossEncoder calls it: one batch call (a single call would drop an empty second text)."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=max_length)
    return [{k: v[i] for k, v in enc.items()} for i in range(len(pairs))]


def test_single_texts_match_the_hf_tokenizer_with_a_prompt():
    proc = TextInputProcessor(MINILM, 32, prompt="query: ")
    tok = AutoTokenizer.from_pretrained(str(MINILM))
    texts = ["hello world", "", WORDS * 10]
    got = proc(texts)
    for ids, text in zip(got.ids, texts):
        assert ids.tolist() == tok("query: " + text, truncation=True, max_length=32)["input_ids"]
    assert got.truncated == 1 and got.type_ids is None and got.owners is None
    with pytest.raises(TypeError, match="index 4 is int"):
        proc(["a", 3], first_index=3)


def test_chunked_windows_cover_the_text_with_overlap():
    proc = ChunkedInputProcessor(MINILM, 32, chunk_overlap=4)
    tok = AutoTokenizer.from_pretrained(str(MINILM))
    content = tok(WORDS * 10, add_special_tokens=False)["input_ids"]
    got = proc(["short text", WORDS * 10])
    assert got.ids[0].tolist() == TextInputProcessor(MINILM, 32)(["short text"]).ids[0].tolist()
    windows = [ids.tolist() for ids, owner in zip(got.ids, got.owners) if owner == 1]
    assert all(w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 32 for w in windows)
    step = proc.window - 4
    for k, w in enumerate(windows):
        assert w[1:-1] == content[k * step:k * step + proc.window]
    assert got.windows == {1: [len(w) - 2 for w in windows]} and len(windows) >= 3
    assert proc.combiner is combine_windows and proc.fingerprint() == {"chunk_overlap": 4}


@pytest.mark.parametrize("max_length", [24, 25])  # odd and even budgets: who keeps the odd token
def test_bert_pairs_match_hf_longest_first_with_token_types(max_length):
    proc = PairInputProcessor(MINILM, max_length)
    got = proc(PAIRS)
    for i, want in enumerate(_hf_pairs(MINILM, PAIRS, max_length)):
        assert got.ids[i].tolist() == want["input_ids"], i
        assert got.type_ids[i].tolist() == want["token_type_ids"], i
    assert got.truncated == 5


def test_roberta_pairs_match_hf_and_hold_the_double_separator(roberta):
    proc = PairInputProcessor(roberta, 24)
    got = proc(PAIRS)
    for i, want in enumerate(_hf_pairs(roberta, PAIRS, 24)):
        assert got.ids[i].tolist() == want["input_ids"], i
    first = got.ids[0].tolist()
    sep = proc.tokenizer.convert_tokens_to_ids("</s>")
    assert first[0] == proc.tokenizer.convert_tokens_to_ids("<s>") and first[-1] == sep
    assert any(first[k] == first[k + 1] == sep for k in range(len(first) - 1))  # </s></s>


def test_huge_pairs_are_cut_by_characters_with_the_same_ids():
    proc = PairInputProcessor(MINILM, 64)
    huge = WORDS * (2_000_000 // len(WORDS))                          # ~2 MB
    spaces = " " * 5000 + WORDS * 20                                   # a cut that would lose words
    pairs = [("short query", huge), (spaces, "doc"), ("q " * 10, spaces)]
    seen = []
    original = proc._encode
    proc._encode = lambda items: seen.extend(len(a) + len(b) for a, b in items) or original(items)
    got = proc(pairs)
    assert seen[0] < 10_000  # the 2 MB document never reached the tokenizer whole
    for i, want in enumerate(_hf_pairs(MINILM, [(a, b[:20_000]) if len(b) > 1e6 else (a, b) for a, b in pairs], 64)):
        assert got.ids[i].tolist() == want["input_ids"], i


@pytest.mark.parametrize("max_length", [48, 49])  # a budget of 45 (odd: the odd token counts) and 46
def test_pairs_long_on_both_sides_match_hf_on_the_whole_pair(max_length):
    """Both sides over max_length: half the budget each, the odd token to the side with more
    tokens (the second on a tie), as longest_first on the whole pair gives it."""
    proc = PairInputProcessor(MINILM, max_length)
    short_words, long_words = "data index text ", "retrieval passage document "
    a, b = short_words * 300, long_words * 150          # 4,800 characters: 900 and 450 tokens
    tie = "query model " * 300                           # 600 tokens, as many as ...
    pairs = [(a, b), (b, a), (tie, "vector search " * 300), (a, a)]
    got = proc(pairs)
    for i, want in enumerate(_hf_pairs(MINILM, pairs, max_length)):
        assert got.ids[i].tolist() == want["input_ids"], i
        assert got.type_ids[i].tolist() == want["token_type_ids"], i
    assert got.truncated == len(pairs)
    with pytest.raises(TextTooLongError, match="pair at index 0"):
        PairInputProcessor(MINILM, max_length, truncation="error")([(a, b)])


def test_pair_errors_name_the_index():
    proc = PairInputProcessor(MINILM, 16, truncation="error")
    with pytest.raises(TextTooLongError, match="pair at index 6 is longer than max_length=16"):
        proc([("a", "b"), ("a", WORDS * 2)], first_index=5)
    with pytest.raises(TypeError, match="index 1 is str, not a pair"):
        proc([("a", "b"), "a"])
    with pytest.raises(TypeError, match="list of"):
        proc(("a", "b"))


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen-tok")
    corpus = [PREFIX + SUFFIX, "yes", "no", f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: q\n<Document>: {WORDS}"]
    write_bpe_tokenizer(folder, corpus * 20, vocab_size=500,
                        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    return folder


def test_reranker_prompt_follows_the_published_recipe(qwen_like):
    proc = RerankerPromptProcessor(qwen_like, 96)
    tok = AutoTokenizer.from_pretrained(str(qwen_like))
    prefix = tok.encode(PREFIX, add_special_tokens=False)
    suffix = tok.encode(SUFFIX, add_special_tokens=False)
    pairs = [("what is it", "a passage"), ("q", WORDS * 2000)]
    got = proc(pairs)
    for ids, (q, d) in zip(got.ids, pairs):
        mid = tok(f"<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}", truncation=True,
                  max_length=96 - len(prefix) - len(suffix))["input_ids"]
        assert ids.tolist() == prefix + mid + suffix
    assert got.truncated == 1 and len(got.ids[1]) == 96
    assert proc.answer_ids == (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))
    assert proc.tokenizer.convert_ids_to_tokens(list(proc.answer_ids)) == ["yes", "no"]


def test_reranker_prompt_needs_yes_and_no_tokens_and_room(roberta, qwen_like):
    with pytest.raises(ValueError, match="no single token 'yes'"):
        RerankerPromptProcessor(roberta, 512)
    with pytest.raises(ValueError, match="leaves no room for the query and document"):
        RerankerPromptProcessor(qwen_like, 8)


def test_reranker_prompt_with_a_huge_query_is_cut_by_characters(qwen_like):
    """Issue 24: the query side was tokenized whole (memory linear in a 2 MB query)."""
    proc = RerankerPromptProcessor(qwen_like, 96)
    huge = WORDS * (2_000_000 // len(WORDS))
    seen = []
    original = proc._encode
    proc._encode = lambda items: seen.extend(len(t) for t in items) or original(items)
    got = proc([(huge, "a passage")])
    assert max(seen) < 20_000  # the 2 MB query never reached the tokenizer whole
    want = RerankerPromptProcessor(qwen_like, 96)([(huge[:20_000], "a passage")])
    assert got.ids[0].tolist() == want.ids[0].tolist() and got.truncated == 1

"""Output precisions: int8 / ubinary codecs on their own, then through `pipeline.run` into files
and back, against a float32 reference (the same passages embedded by `Engine` in this process).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.output import quantize
from pipeline.inputs.shards import calibration_shards
from pipeline.inputs.sources import Fragment
from pipeline.output.writer import part_table, to_numpy
from pipeline.output.manifest import Manifest, read_manifest
from pipeline.output.output_folder import OutputFolder

N = 80
RUN = {"num_workers": 1, "shard_rows": 40, "progress": False}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- the codecs, no Ray --------------------------------------------------------------------

def test_int8_round_trip_and_clipping():
    x = unit_rows(500, 64)
    calib = quantize.calibrate(x[:200])  # 300 rows the calibration never saw
    codes = quantize.quantize_int8(x, calib)
    assert codes.dtype == np.int8
    back = quantize.dequantize_int8(codes, calib)
    assert cosine_rows(back, x).min() > 0.99
    tight = quantize.calibrate(x[:200], margin=0.0)  # the sample's extremes map to the ends
    assert quantize.quantize_int8(x[:200], tight).min() == -128 and quantize.quantize_int8(x[:200], tight).max() == 127
    # Values outside the calibrated range clip to its ends instead of wrapping around.
    low = np.asarray(calib["low"], dtype=np.float32)
    assert (quantize.quantize_int8(low[None] - 1.0, calib) == -128).all()
    with pytest.raises(ValueError, match="32 dimensions, the calibration 64"):
        quantize.quantize_int8(x[:, :32], calib)


def test_ubinary_pack_unpack_is_sign_cosine():
    x = unit_rows(50, 20)  # 20 bits: padded to 3 bytes
    packed = quantize.pack_bits(x)
    assert packed.shape == (50, 3) and packed.dtype == np.uint8
    signs = quantize.unpack_bits(packed, 20)
    np.testing.assert_array_equal(signs > 0, x > 0)
    hamming = np.unpackbits(packed[:, None] ^ packed[None], axis=2).sum(2)
    np.testing.assert_allclose(signs @ signs.T, 1 - 2 * hamming / 20, atol=1e-6)


def test_calibration_windows_spread_over_fragments():
    fragments = [Fragment("a", 700), Fragment("b", 50), Fragment("c", 2250)]
    shards = calibration_shards(fragments, sample_rows=100, windows=10)
    assert len(shards) == 10 and sum(s.num_rows for s in shards) == 100
    assert shards[0].row_offset == 0 and shards[-1].row_offset + shards[-1].num_rows == 3000
    for s in shards:  # pieces cover exactly the window, in fragment-local rows
        bounds = np.cumsum([0, 700, 50, 2250])
        rows = [r for p in s.pieces for r in range(bounds[p.fragment] + p.start, bounds[p.fragment] + p.stop)]
        assert rows == list(range(s.row_offset, s.row_offset + s.num_rows))
    small = calibration_shards([Fragment("a", 30)], sample_rows=100)
    assert [(s.row_offset, s.num_rows) for s in small] == [(0, 30)]


def test_part_metadata_decodes_and_missing_metadata_is_refused():
    x = unit_rows(10, 16)
    quant = quantize.record("int8", 16, quantize.calibrate(x))
    table = part_table(pa.array(range(10)), x, None, "int8", {"fp": 1}, quant)
    assert table.schema.field("embedding").type == pa.list_(pa.int8(), 16)
    assert cosine_rows(to_numpy(table, dequantize=True), x).min() > 0.99
    bare = table.replace_schema_metadata({})
    with pytest.raises(ValueError, match="pipeline.quantization"):
        to_numpy(bare, dequantize=True)


# --- through pipeline.run -----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipeline.inputs.samples import sample_passages
    texts = sample_passages(N, seed=5, max_chars=300)
    path = tmp_path_factory.mktemp("corpus") / "corpus.parquet"
    pq.write_table(pa.table({"doc": [f"d{i:03d}" for i in range(N)], "text": texts}), path, row_group_size=50)
    return path, texts


@pytest.fixture(scope="module")
def reference(corpus):
    from workers import Engine, EngineConfig
    return Engine(EngineConfig(num_threads=2)).embed(corpus[1])  # the pipeline's dtype (auto)


@pytest.fixture(scope="module")
def outputs(ray_local, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    runs = {"int8": {"output_dtype": "int8"}, "ubinary": {"output_dtype": "ubinary"},
            "int8_128": {"output_dtype": "int8", "dimensions": 128}}
    for name, options in runs.items():
        pipeline.run(str(corpus[0]), output=root / name, id_column="doc", **RUN, **options)
    return root


def test_int8_through_pipeline(outputs, reference):
    manifest = read_manifest(outputs / "int8")
    quant = manifest["quantization"]
    assert quant["output_dtype"] == "int8" and quant["dimensions"] == 384
    assert quant["calibration"]["sample_rows"] == N and len(quant["calibration"]["low"]) == 384
    codes = pipeline.read_embeddings(outputs / "int8", as_numpy=True)
    assert codes.dtype == np.int8 and codes.shape == (N, 384)
    back = pipeline.read_embeddings(outputs / "int8", as_numpy=True, dequantize=True)
    cos = cosine_rows(back, reference)
    print(f"int8 vs float32 cosine: min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= 0.99
    part = next((outputs / "int8").glob("part-*.parquet"))
    assert json.loads(pq.read_schema(part).metadata[quantize.QUANT_KEY]) == quant
    table = pipeline.read_embeddings(outputs / "int8", dequantize=True)
    assert table.column("id").to_pylist() == [f"d{i:03d}" for i in range(N)]
    np.testing.assert_array_equal(pipeline.to_numpy(table, dequantize=True), back)  # decoded once


def test_matryoshka_dimensions_apply_before_int8(outputs, reference):
    manifest = read_manifest(outputs / "int8_128")
    assert manifest["quantization"]["dimensions"] == 128 and manifest["fingerprint"]["engine"]["dimensions"] == 128
    back = pipeline.read_embeddings(outputs / "int8_128", as_numpy=True, dequantize=True)
    assert back.shape == (N, 128)
    # Matryoshka = the first 128 dims, renormalized; the calibration saw those, not the 384-d ones.
    truncated = reference[:, :128] / np.linalg.norm(reference[:, :128], axis=1, keepdims=True)
    assert cosine_rows(back, truncated).min() >= 0.99
    assert len(manifest["quantization"]["calibration"]["high"]) == 128


def test_ubinary_through_pipeline_ranks_like_float32(outputs, reference):
    packed = pipeline.read_embeddings(outputs / "ubinary", as_numpy=True)
    assert packed.dtype == np.uint8 and packed.shape == (N, 48)
    bits = np.unpackbits(packed, axis=1)
    agree = (bits == (reference > 0)).mean()
    assert agree > 0.99, agree  # sign bits of the same vectors (bf16 noise may flip a few ~0 values)
    hamming = np.unpackbits(packed[:, None] ^ packed[None], axis=2).sum(2)
    assert (np.argmin(hamming, axis=1) == np.arange(N)).all()  # nearest by Hamming: itself
    k = 10
    top_bin = np.argsort(hamming, axis=1, kind="stable")[:, 1:k + 1]
    top_f32 = np.argsort(-(reference @ reference.T), axis=1)[:, 1:k + 1]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_bin, top_f32)])
    print(f"ubinary Hamming top-{k} overlap with float32 top-{k}: {overlap:.3f} (chance {k / (N - 1):.3f})")
    assert overlap > 5 * k / (N - 1)
    signs = pipeline.read_embeddings(outputs / "ubinary", as_numpy=True, dequantize=True)
    np.testing.assert_allclose(signs @ signs.T, 1 - 2 * hamming / 384, atol=1e-5)


def test_binary_index_over_ubinary_output(outputs, tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is the optional extra 'index'")
    from pipeline.index import Index, build
    stats = build(outputs / "ubinary", tmp_path / "bin.faiss", "flat", threads=1)
    assert stats["metric"] == "hamming" and stats["vectors"] == N
    signs = pipeline.read_embeddings(outputs / "ubinary", as_numpy=True, dequantize=True)
    hits = Index.load(tmp_path / "bin.faiss").search(signs, 1)
    assert [h[0][0] for h in hits] == [f"d{i:03d}" for i in range(N)] and hits[0][0][1] == 1.0
    build(outputs / "ubinary", tmp_path / "bhnsw.faiss", "hnsw", threads=1)
    graph = Index.load(tmp_path / "bhnsw.faiss").search(signs, 10)
    assert [h[0][0] for h in graph] == [f"d{i:03d}" for i in range(N)]
    with pytest.raises(ValueError, match="no binary form"):
        build(outputs / "ubinary", tmp_path / "pq.faiss", "ivfpq")


def test_resume_with_other_dtype_refused_and_calibration_reused(outputs, corpus):
    with pytest.raises(pipeline.FingerprintMismatch, match="output_dtype: 'int8' in the output, 'ubinary'"):
        pipeline.run(str(corpus[0]), output=outputs / "int8", id_column="doc", output_dtype="ubinary", **RUN)
    # Forget one shard and change the stored calibration: the redone part must use the stored
    # one (a recomputed calibration would come back unchanged, so it could not tell).
    stored = Manifest.load(OutputFolder.open(outputs / "int8"))
    manifest = {"quantization": json.loads(json.dumps(stored.data["quantization"]))}
    calib = manifest["quantization"]["calibration"]
    calib["low"], calib["high"] = [v * 2 for v in calib["low"]], [v * 2 for v in calib["high"]]
    stored.put("quantization", manifest["quantization"])
    stored.uncommit("000001")
    stored.fold()
    pipeline.run(str(corpus[0]), output=outputs / "int8", id_column="doc", output_dtype="int8", **RUN)
    after = read_manifest(outputs / "int8")
    assert after["quantization"] == manifest["quantization"]
    part = outputs / "int8" / after["shards"]["000001"]["path"]
    assert json.loads(pq.read_schema(part).metadata[quantize.QUANT_KEY]) == manifest["quantization"]


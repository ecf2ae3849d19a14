# Set-up and entry points. Needs only python3 and make on a fresh machine.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
DEMO_QUERY ?= how do I compress data and write it to a file

.PHONY: setup test test-fast demo bench bench-assets clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch (or a dependency range resolved without it) is a
# multi-GB CUDA build. The constraint file keeps every later install on the same torch.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -qq --upgrade pip
	$(VPY) -m pip install -qq "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(VPY) -m pip install -qq -c $(VENV)/constraints.txt -e ".[dev,index]"
	touch $(STAMP)

test: setup
	$(VPY) -m pytest -q tests

test-fast: setup
	$(VPY) -m pytest -q tests -m "not slow"

# Embed the sample corpus, index it (exact inner product) and search it.
demo: setup
	$(VPY) jobs/embed_corpus.py --demo
	$(VPY) jobs/build_index.py --embeddings out/demo/embeddings --index out/demo/index.faiss
	$(VPY) jobs/search.py --index out/demo/index.faiss -k 5 --query "$(DEMO_QUERY)"

bench: setup
	$(VPY) benchmarks/bench_engine.py engine

# Tokenizer files for benchmarks/gpu.sh on a GPU machine that lacks this project's packages.
bench-assets: setup
	mkdir -p .bench_assets/tokenizer
	$(VPY) -c "import shutil; from workers.model_folder import default_model_path as p; \
	[shutil.copy(p() / f, '.bench_assets/tokenizer/') for f in \
	 ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json')]"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

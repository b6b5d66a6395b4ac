# The two commands: `make bench` (the main job) and `make test`. Each creates .venv when it is
# missing and rebuilds the extension when its sources change.
VENV     ?= .venv
PYTHON   := $(VENV)/bin/python
SYSPY    ?= python3
TORCH    ?= torch>=2.4
CUDA_HOME ?= $(wildcard /usr/local/cuda)
export CUDA_HOME
BENCH_ARGS ?=
INTEGRATIONS := "transformers>=4.46" "accelerate>=1.1" "lightning>=2.4" "opacus>=1.5"
TEST_ARGS  ?=

# csrc/emulation is not part of the extension: tests/cuda_emulation.py builds it.
EXT_SOURCES := setup.py $(filter-out csrc/emulation/%,$(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h \
               csrc/*/*.cuh csrc/include/noisefuse/*.h))

.PHONY: test bench bench-kernels sass-report gpu-check gpu-bundle compat build venv clean

venv: $(VENV)/.deps-stamp

$(VENV)/.torch-stamp:
	$(SYSPY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip setuptools wheel ninja
	$(PYTHON) -m pip install -q "$(TORCH)" numpy
	touch $@

# The trainers of the integration tests (tests/test_hf_trainer.py, test_lightning.py, test_opacus.py)
# are installed against a pin of the installed torch, so that none of them replaces it.
$(VENV)/.deps-stamp: $(VENV)/.torch-stamp pyproject.toml
	$(PYTHON) -m pip install -q pytest pytest-timeout pytest-xdist pytorch_optimizer matplotlib tqdm pytest-benchmark \
		scikit-learn hypothesis nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
	$(PYTHON) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-pin.txt
	$(PYTHON) -m pip install -q -c $(VENV)/torch-pin.txt $(INTEGRATIONS)
	touch $@

# The package is installed once, editable and without compiling (NOISEFUSE_SKIP_EXT=1); the extension
# is built in place by `setup.py build_ext` in the persistent folder build/ext, where ninja recompiles
# only the objects an edit touched (pip's editable build would compile everything in a new temporary
# folder each time). CUDA_ARCHS narrows the CUDA architectures for local work, e.g. CUDA_ARCHS=9.0
# (the default, setup.py's, builds sm_80 and sm_90 with PTX).
# A module of an earlier, per-Python build would shadow the abi3 one (Python tries its own tag first).
CUDA_ARCHS ?=
$(VENV)/.install-stamp: $(VENV)/.deps-stamp pyproject.toml setup.py
	NOISEFUSE_SKIP_EXT=1 $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.build-stamp: $(VENV)/.install-stamp $(EXT_SOURCES)
	rm -f noisefuse/_C.cpython-*.so
	$(if $(CUDA_ARCHS),TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)") MAX_JOBS=$${MAX_JOBS:-2} \
		$(PYTHON) setup.py -q build_ext --inplace --build-temp build/ext
	touch $@

build: $(VENV)/.build-stamp

test: build
	$(PYTHON) -m pytest -q $(TEST_ARGS)

# The peers of the state-precision section (noisefuse/bench/peers.py), against the torch pin; the
# section notes any that did not install. PEERS= (empty) leaves them out.
PEERS ?= bitsandbytes torchao deepspeed
$(VENV)/.peers-stamp: $(VENV)/.deps-stamp
	$(if $(strip $(PEERS)),$(PYTHON) -m pip install -q -c $(VENV)/torch-pin.txt $(PEERS) \
		|| echo "make bench: some of $(PEERS) did not install; the benchmark notes which")
	touch $@

bench: build $(VENV)/.peers-stamp
	$(PYTHON) -m noisefuse.bench $(BENCH_ARGS)

# The static SASS report of every CUDA kernel variant beside torch's fused AdamW/SGD (an estimate from
# machine code, docs/backends/native.md): SASS_ARGS="--out benchmarks/results/<folder>" writes a results folder.
SASS_ARGS ?=
sass-report: build
	$(PYTHON) -m noisefuse.bench.sass $(SASS_ARGS)

# The pytest-benchmark suite of the individual fused kernels (not part of `make test`).
bench-kernels: build
	$(PYTHON) -m pytest benchmarks/ --benchmark-columns=median,iqr,rounds

# On a lent GPU machine: the time-boxed GPU check (scripts/gpu_check.sh; docs/benchmarks.md, "On a
# lent GPU"): three files in $(OUT). `make gpu-bundle` first builds here what that machine lacks.
gpu-check:
	PYTHON=$${PYTHON:-python3} scripts/gpu_check.sh $(or $(OUT),gpu-results)

gpu-bundle:
	scripts/gpu_bundle.sh

# The tests on the GPU machine's torch and Triton (2.11, 3.6), on this CPU machine.
compat:
	scripts/compat_check.sh

clean:
	rm -rf build *.egg-info noisefuse/_C*.so $(VENV)/.build-stamp $(VENV)/.install-stamp

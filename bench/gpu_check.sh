#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see README): build with CUDA, run the GPU tests, run
# the GPU benchmarks, leave logs under $OUT. The machine has torch+CUDA, triton, pybind11 and
# scikit-build-core but no registry: the wheels it lacks travel in the git-ignored .whl/
# (unidecode, inflect and its deps, argparse-manpage for the man pages the build makes,
# hypothesis and its deps for the tests' conftest, gguf (its numpy, pyyaml are there) for the
# dequantize reference, soprano-tts 0.2.0 for the upstream comparison). Fill .whl/ here with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     unidecode inflect more_itertools typeguard jaraco.functools tornado hypothesis \
#     sortedcontainers attrs gguf soprano-tts==0.2.0
#   pip wheel --no-deps argparse-manpage -w .whl
# PARTS (default "tests bench") picks what runs after the build, so a rerun can skip the rest.
set -uo pipefail
REPO=$(pwd)
PARTS=${PARTS:-tests bench}
OUT=${OUT:-/tmp/soprano-gpu-out}
mkdir -p "$OUT"
t0=$SECONDS
stamp() { echo "== $1 (t=$((SECONDS - t0)) s)"; }

nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  .whl/[Uu]nidecode-*.whl .whl/inflect-*.whl .whl/more_itertools-*.whl .whl/typeguard-*.whl \
  .whl/jaraco_functools-*.whl .whl/argparse_manpage-*.whl .whl/tornado-*.whl \
  .whl/hypothesis-*.whl .whl/sortedcontainers-*.whl .whl/attrs-*.whl .whl/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --target "$REPO/.upstream" \
  .whl/soprano_tts-0.2.0-*.whl || exit 1

stamp build
# sm_90 only: the lent machines are H100/H200, and one architecture halves nvcc's time.
SOPRANO_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install --no-build-isolation \
  --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90 "$REPO" >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }

stamp "soprano-tts env"
(cd /tmp && python3 -m soprano.ops 2>&1 | tee "$OUT/env.txt")

if [[ " $PARTS " == *" tests "* ]]; then
stamp tests
# From /tmp so the source tree (which has no built _C) does not shadow the installed package.
# The files with gpu-marked tests (whole: their triton cases run compiled here), and the engine's.
(cd /tmp && timeout 300 python3 -m pytest -q -rs -p no:cacheprovider \
  "$REPO/tests/test_ops_attention.py" "$REPO/tests/test_ops_rms_norm.py" \
  "$REPO/tests/test_ops_vocos.py" "$REPO/tests/test_ops_dequant.py" \
  "$REPO/tests/test_ops_table.py" "$REPO/tests/test_gpu.py" "$REPO/tests/test_engine.py" 2>&1 \
  | tee "$OUT/tests.log" | tail -25)
fi

if [[ " $PARTS " == *" bench "* ]]; then
stamp "bench: every kernel on every backend (bf16)"
# dequantize's numpy reference (16 M values per type, on the host) adds about a minute
(cd /tmp && timeout 300 python3 "$REPO/bench/kernels.py" --repeats 3 --markdown 2>&1 \
  | tee "$OUT/kernels.md")

stamp "bench: the decoder per token, one-shot and streamed, per backend"
(cd /tmp && timeout 200 python3 "$REPO/bench/decoder.py" --tokens 128 --runs 3 \
  --backend torch --backend triton --backend cuda 2>&1 | tee "$OUT/decoder.md")

stamp "bench: the graphed decode step per backend"
(cd /tmp && timeout 240 python3 "$REPO/bench/decode_step.py" --repeats 3 --profile 2>&1 \
  | tee "$OUT/decode_step.md")

stamp "bench: end to end, ours vs upstream on the GPU"
(cd /tmp && timeout 240 python3 "$REPO/bench/e2e.py" --device cuda --tokens 128 --runs 3 2>&1 \
  | tee "$OUT/e2e_cuda.txt")
fi
stamp done

#!/usr/bin/env bash
# The CUDA check, in two halves.
#
#   scripts/gpu-check.sh prepare   # here (any x86-64 Linux with Rust and Python): builds the `cuda`
#                                  # feature against a CUDA 13.0 toolkit assembled from NVIDIA's
#                                  # PyPI wheels (scripts/cuda-toolkit.sh), and packs into .gpu/
#                                  # the test, example and benchmark binaries, MNIST and the PyTorch
#                                  # peer script (about 30 MiB).
#   scripts/gpu-check.sh run       # on the GPU machine, from the repository root with .gpu/ in it:
#                                  # no Rust toolchain or network needed there, only the NVIDIA
#                                  # driver and a PyTorch install that carries the CUDA 13
#                                  # libraries (cuBLAS, cuRAND, NVRTC, the runtime).
#
# `run` does, in order, logging to $OUT (default .gpu/out; summary.txt has the figures): the whole test suite with
# FERROKERAS_DEVICE=cuda (the same assertions as on the CPU), the guide's GAN for 100 real-MNIST
# steps, and the W2/W4 benchmarks next to PyTorch eager and torch.compile on the same GPU.
# Building there instead is possible (cargo build --features cuda) but compiles candle's CUDA
# kernels with nvcc for several minutes: binaries built here keep the GPU time for the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
setup() {
  [ -x .gpu/bin/test-gpu_suite ] ||
    python3 -c 'import tarfile; tarfile.open(".gpu/bin.tar.xz").extractall(".gpu")'
  # The CUDA 13 libraries that PyTorch's wheels carry.
  libs=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
want = ["libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcudart.so.13",
        "libcudnn.so.9"]
dirs = []
for r in roots:
    for w in want:
        for p in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True):
            d = os.path.dirname(p)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
PY
)
  export LD_LIBRARY_PATH=$libs:${LD_LIBRARY_PATH:-}
  # Tests find fixtures and MNIST by the paths they were built with.
  built=/work/main
  if [ ! -e "$built" ]; then mkdir -p "$(dirname $built)" && ln -s "$PWD" "$built"; fi
  [ -d ../shared/data/mnist ] || { mkdir -p ../shared/data && cp -r .gpu/mnist ../shared/data/mnist; }
  export FERROKERAS_DEVICE=cuda
  # candle's kernels ship as PTX, compiled by the driver at first use in each process: keep the
  # compiled code in one cache that every test process shares.
  export CUDA_CACHE_PATH=$PWD/.gpu/nvcache CUDA_CACHE_MAXSIZE=4294967296
}

# The tests of one file (module of tests/gpu_suite.rs), by exact name: a plain filter would also
# match files whose names end the same way (`resume::` is in `gan_resume::...`).
run_module() {
  local names
  names=$(.gpu/bin/test-gpu_suite --list 2>/dev/null | sed -n "s/^\($1::.*\): test$/\1/p")
  [ -n "$names" ] || return 0
  timeout 300 .gpu/bin/test-gpu_suite --exact --test-threads="${2:-1}" $names
}
export -f run_module

case "$mode" in
prepare)
  tk=${CUDA_TOOLKIT_DIR:-target/cuda-toolkit}
  scripts/cuda-toolkit.sh "$tk" >/dev/null
  tk=$(cd "$tk" && pwd)
  export CUDA_HOME=$tk/cu13 PATH=$tk/cu13/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  td=target/cuda
  rm -rf .gpu && mkdir -p .gpu/bin
  for f in tests/*.rs; do
    n=$(basename "$f" .rs)
    [ "$n" = gpu_suite ] || grep -q "^mod $n;" tests/gpu_suite.rs ||
      { echo "tests/gpu_suite.rs does not include tests/$n.rs: add it" >&2; exit 1; }
  done
  list=$(cargo test --release --features cuda --target-dir $td --lib --test gpu_suite --no-run --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
  echo "$list" | while read -r name exe; do cp "$exe" ".gpu/bin/test-$name"; done
  cargo build --release --features cuda --target-dir $td --examples
  cp $td/release/examples/05_gan .gpu/bin/05_gan
  bench=$(cargo bench --features cuda --target-dir $td --bench workloads --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable"): print(m["executable"])')
  cp "$bench" .gpu/bin/workloads
  # The same benchmark with cuDNN's convolutions (`cudnn` feature), run only where libcudnn.so.9 is.
  bench=$(cargo bench --features cudnn --target-dir $td --bench workloads --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable"): print(m["executable"])')
  cp "$bench" .gpu/bin/workloads-cudnn
  strip .gpu/bin/*
  cp -r ../shared/data/mnist .gpu/mnist 2>/dev/null || python3 - <<'PY'
# No bundled copy: fetch MNIST through the library's own loader cache instead.
import sys; sys.exit("MNIST not found at ../shared/data/mnist; put the four IDX .gz files in .gpu/mnist")
PY
  # One xz stream with a window larger than a binary: the binaries share most of their code.
  (cd .gpu && tar cf - bin | xz -T1 --lzma2=preset=6,dict=256MiB > bin.tar.xz) && rm -rf .gpu/bin
  du -sh .gpu
  ;;
run)
  out=${OUT:-.gpu/out}
  mkdir -p "$out"
  sum=$out/summary.txt
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$sum"
  setup
  now() { python3 -c 'import time; print(time.time())'; }
  status=0
  echo "== tests on CUDA" | tee -a "$sum"
  # One process per test file, as `cargo test` runs them (tests that reseed the global generator
  # expect no other file's tests beside them), several files at a time, each test on one thread:
  # candle's CUDA device is not safe to drive from several threads at once (seen: hangs).
  mods=$(sed -n 's/^mod \([a-z0-9_]*\);$/\1/p' tests/gpu_suite.rs)
  timeout 300 .gpu/bin/test-ferrokeras --test-threads=1 > "$out/tests.log" 2>&1 ||
    { status=1; echo "FAILED: unit tests" | tee -a "$sum"; }
  mkdir -p .gpu/logs
  # Each file's log and a line in the summary as soon as it ends (a cut-short run keeps them).
  export OUT_DIR=$out
  printf '%s\n' $mods | xargs -P 8 -I{} bash -c '
    start=$(date +%s)
    if run_module {} > .gpu/logs/{}.log 2>&1; then r=ok; else r=FAILED; fi
    line="{}: $r in $(( $(date +%s) - start )) s"
    { echo "-- $line"; cat .gpu/logs/{}.log; } >> "$OUT_DIR/tests.log"
    echo "$line" | tee -a "$OUT_DIR/summary.txt"' > .gpu/logs/done.txt || true
  grep -q FAILED .gpu/logs/done.txt && status=1
  grep -E "^test result" "$out/tests.log" | awk '{p+=$4; f+=$6; i+=$8} END {print "tests: " p " passed, " f " failed, " i " ignored"}' | tee -a "$sum"
  grep -E "^test .* FAILED$" "$out/tests.log" | tee -a "$sum" || true
  echo "== GAN, 100 MNIST steps on CUDA" | tee -a "$sum"
  start=$(now)
  .gpu/bin/05_gan --device cuda --steps 100 --out .gpu/gan --mnist-dir .gpu/mnist > "$out/gan.log" 2>&1 || status=1
  end=$(now)
  tail -n 3 "$out/gan.log" | tee -a "$sum"
  python3 -c "print('GAN wall time: %.1f s' % ($end - $start))" | tee -a "$sum"
  cp .gpu/gan/generated_final.png "$out/" 2>/dev/null || true
  echo "== benchmarks: ferrokeras" | tee -a "$sum"
  # BENCH_F32=0 / RUN_TORCH=0 / BENCH_AB=0 (cudarc's events, convolution paths) / BENCH_LAYERS=0 /
  # BENCH_CUDNN=0 / OWN_KERNELS=0 / BENCH_TF32=0 / BENCH_BF16=0 leave a part out (for a short
  # rerun); BENCH_CANDLE=1 adds W4 on candle's own convolution ops.
  if [ "${BENCH_F32:-1}" != 0 ]; then
    .gpu/bin/workloads --device cuda w2 w4 gemm 2>&1 | tee -a "$sum" || status=1
  fi
  if [ "${RUN_TORCH:-1}" != 0 ]; then
    # PyTorch next, before the variants below, so that a run cut short still has the comparison.
    echo "== benchmarks: PyTorch on the same GPU" | tee -a "$sum"
    # The targets: W2 against eager; W4 against eager and torch.compile.
    # TORCH_COMPILE=0 leaves out torch.compile (its compilation alone takes about 20 s).
    runs=("w2" "w4")
    [ "${TORCH_COMPILE:-1}" = 0 ] || runs+=("w4 --compile")
    for run in "${runs[@]}"; do
      timeout 240 python3 benches/peers/bench_torch.py --device cuda --w4-steps 100 --workload $run \
        2>>"$out/torch.err" | grep RESULT | tee -a "$sum" || status=1
    done
  fi
  echo "== variants of ferrokeras" | tee -a "$sum"
  if [ "${BENCH_CANDLE:-0}" != 0 ]; then
    # The same GAN step with candle's own convolution ops (slow: 23.7 steps/s on an H200).
    echo "W4 with FERROKERAS_CONV=candle:" | tee -a "$sum"
    FERROKERAS_CONV=candle .gpu/bin/workloads --device cuda w4 2>&1 | tail -n 1 | tee -a "$sum" || status=1
  fi
  if [ "${BENCH_AB:-1}" != 0 ]; then
    # cudarc's two events per buffer, which devices opened by this library go without
    # (`runtime::device_from_name`): what keeping them costs.
    echo "W2, W4 with FERROKERAS_CUDA_EVENTS=on:" | tee -a "$sum"
    FERROKERAS_CUDA_EVENTS=on .gpu/bin/workloads --device cuda w2 w4 2>&1 | grep "^| W" | tee -a "$sum" || status=1
    # Strided transposed convolutions as convolutions of the zero-dilated input.
    echo "W4 with FERROKERAS_CONV=dilated:" | tee -a "$sum"
    FERROKERAS_CONV=dilated .gpu/bin/workloads --device cuda w4 2>&1 | tail -n 1 | tee -a "$sum" || status=1
    # Every convolution by patches (the GAN's last one too, by input pixel otherwise).
    echo "W4 with FERROKERAS_CONV=im2col:" | tee -a "$sum"
    FERROKERAS_CONV=im2col .gpu/bin/workloads --device cuda w4 2>&1 | tail -n 1 | tee -a "$sum" || status=1
  fi
  if [ "${BENCH_LAYERS:-1}" != 0 ]; then
    # Where W4's step goes, layer by layer (forward, backward) and per optimizer update.
    .gpu/bin/workloads --device cuda w4layers 2>&1 | grep "^| [GDs]" | tee -a "$sum" || status=1
  fi
  if [ "${BENCH_CUDNN:-1}" != 0 ]; then
    # Every convolution (forward, and the gradients written as forward convolutions) through cuDNN.
    if ldd .gpu/bin/workloads-cudnn | grep -q "libcudnn.so.9 => /"; then
      echo "With cuDNN (--features cudnn):" | tee -a "$sum"
      .gpu/bin/workloads-cudnn --device cuda w2 w4 w4layers 2>&1 | grep "^| [WGDs]" | tee -a "$sum" || status=1
    else
      echo "cuDNN build not run: no libcudnn.so.9 in the Python packages" | tee -a "$sum"
    fi
  fi
  if [ "${OWN_KERNELS:-1}" != 0 ]; then
    # Our CUDA kernels (Adam as one kernel per variable; activations, with a bias, one kernel each
    # way), off by default until checked here: the layer, optimizer and training tests with them,
    # then W2 and W4 (and W4 layer by layer).
    echo "== our CUDA kernels (FERROKERAS_CUDA_KERNELS=on: Adam, activations)" | tee -a "$sum"
    for m in keras_parity keras_layer_parity gradcheck optimizer_extras fit_api gan resume; do
      if FERROKERAS_CUDA_KERNELS=on run_module $m > ".gpu/logs/fused-$m.log" 2>&1; then r=ok; else r=FAILED; status=1; fi
      echo "our CUDA kernels, tests of $m: $r ($(grep -h '^test result' ".gpu/logs/fused-$m.log" | tail -n 1))" | tee -a "$sum"
    done
    cat .gpu/logs/fused-*.log >> "$out/tests.log"
    FERROKERAS_CUDA_KERNELS=on .gpu/bin/workloads --device cuda w2 w4 w4layers 2>&1 | grep "^| [WGDs]" | tee -a "$sum" || status=1
  fi
  if [ "${BENCH_TF32:-1}" != 0 ]; then
    # Float32 products (and, without cuDNN, convolutions) in TensorFloat-32, as PyTorch's cuDNN
    # convolutions run by default.
    echo "With --tf32:" | tee -a "$sum"
    .gpu/bin/workloads --device cuda --tf32 w2 w4 2>&1 | grep "^| W" | tee -a "$sum" || status=1
  fi
  if [ "${BENCH_BF16:-1}" != 0 ]; then
    .gpu/bin/workloads --device cuda --policy mixed_bfloat16 w2 w4 2>&1 | tee -a "$sum" || status=1
  fi
  exit $status
  ;;
module)
  # scripts/gpu-check.sh module NAME [THREADS]: one test file on the GPU.
  setup
  run_module "$2" "${3:-1}"
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare|run|module NAME [THREADS]" >&2
  exit 2
  ;;
esac

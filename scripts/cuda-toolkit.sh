#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolkit (nvcc, headers, libraries, cuDNN 9 and a link-time stub of the driver library)
# from NVIDIA's PyPI wheels into $1 (default: target/cuda-toolkit), for building the `cuda` feature on a machine
# without a system CUDA installation. The driver itself (libcuda.so.1) comes from the machine that runs the
# binaries; the stub only satisfies the linker.
# Usage: scripts/cuda-toolkit.sh [DIR]; then: export CUDA_HOME=DIR/cu13 PATH=DIR/cu13/bin:$PATH
set -euo pipefail
dir=${1:-target/cuda-toolkit}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ ! -x "$dir/cu13/bin/nvcc" ]; then
  python3 -m pip install -q --no-deps --target "$dir/wheels" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-crt==13.0.88" \
    "nvidia-nvvm==13.0.88" "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14" \
    "nvidia-curand==10.4.0.35" "nvidia-cuda-nvrtc==13.0.88"
  rm -rf "$dir/cu13"
  mv "$dir/wheels/nvidia/cu13" "$dir/cu13"
  rm -rf "$dir/wheels"
fi
# cuDNN 9 (headers and libraries), for the `cudnn` feature: cudarc links libcudnn.so.9.
if [ ! -e "$dir/cu13/lib/libcudnn.so.9" ]; then
  python3 -m pip install -q --no-deps --target "$dir/wheels" "nvidia-cudnn-cu13==9.28.1.4"
  cp -a "$dir/wheels/nvidia/cudnn/lib/." "$dir/cu13/lib/"
  cp -a "$dir/wheels/nvidia/cudnn/include/." "$dir/cu13/include/"
  rm -rf "$dir/wheels"
fi
lib=$dir/cu13/lib
# Unversioned names for the linker.
for f in "$lib"/lib*.so.*; do
  base=$(basename "$f"); stem=${base%%.so.*}
  case $stem in *.alt|*builtins*) continue ;; esac
  ln -sf "$base" "$lib/$stem.so"
done
# Link-time stub of the driver API: every cu* entry point named in cuda.h, in a library whose soname is the
# driver's, so the binaries load the real libcuda.so.1 at run time.
if [ ! -e "$lib/stubs/libcuda.so.1" ]; then
  mkdir -p "$lib/stubs"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$dir/cu13/include/cuda.h" | sort -u |
    sed 's/.*/int &(void) { return 999; }/' > "$lib/stubs/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/stubs/libcuda.so.1" "$lib/stubs/cuda_stub.c"
  ln -sf libcuda.so.1 "$lib/stubs/libcuda.so"
fi
echo "CUDA toolkit ready: export CUDA_HOME=$dir/cu13 PATH=$dir/cu13/bin:\$PATH"

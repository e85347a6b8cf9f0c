#!/usr/bin/env bash
# Kernels per training step on the path that GPUs take, counted on this CPU: builds
# scripts/kernel_count/main.rs against a copy of candle-core whose CPU backend counts its calls
# (scripts/kernel_count/patch_candle.py), in target/kernel-count, and runs it with
# FERROKERAS_KERNELS=candle. Each counted call is one kernel launch and one fresh buffer on
# candle's CUDA backend; the figures in BENCHMARKS.md come from here.
#
#   scripts/kernel-count.sh [w4] [w2]            # KERNEL_COUNT_SITES=1: by call site (slower)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=target/kernel-count
candle=$(cargo metadata --format-version 1 --locked 2>/dev/null |
  python3 -c 'import json,sys
m=json.load(sys.stdin)
print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="candle-core").rsplit("/",1)[0])')
version=$(basename "$candle")
mkdir -p "$work/src"
# Patched again when the patch changes.
stamp="$work/$version.$(md5sum < scripts/kernel_count/patch_candle.py | cut -c1-12).patched"
if [ ! -f "$stamp" ]; then
  rm -f "$work"/*.patched
  rm -rf "$work/candle-core"
  cp -r "$candle" "$work/candle-core"
  chmod -R u+w "$work/candle-core"
  python3 scripts/kernel_count/patch_candle.py "$work/candle-core"
  touch "$stamp"
fi
cp scripts/kernel_count/main.rs "$work/src/main.rs"
sed -i "s|#\[path = \"../../../examples/shared/gan.rs\"\]|#[path = \"$repo/examples/shared/gan.rs\"]|" "$work/src/main.rs"
cat > "$work/Cargo.toml" <<TOML
[package]
name = "kernel_count"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
ferrokeras = { path = "$repo" }
candle-core = "=${version#candle-core-}"

[patch.crates-io]
candle-core = { path = "candle-core" }

[profile.release]
debug = 1
TOML
cp Cargo.lock "$work/Cargo.lock"
(cd "$work" && cargo build --release --quiet)
FERROKERAS_KERNELS=candle "$work/target/release/kernel_count" "$@"

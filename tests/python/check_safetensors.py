"""Reads the weights file written by `cargo test --test saving` with Python's safetensors package.

Run by .ci/run: python3 tests/python/check_safetensors.py target/python-check
"""

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

out = Path(sys.argv[1])
tensors = load_file(str(out / "weights.safetensors"))
names = (out / "names.txt").read_text().split("\n")
assert sorted(tensors) == sorted(names), (sorted(tensors), names)
kernel = tensors[names[0]]
assert kernel.dtype == np.float32 and kernel.shape == (2, 3), (kernel.dtype, kernel.shape)
np.testing.assert_array_equal(kernel, np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32))
bias = tensors[names[1]]
assert bias.shape == (3,) and not bias.any()
print(f"python safetensors read {len(tensors)} tensors: {', '.join(sorted(tensors))}")

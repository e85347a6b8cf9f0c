"""Adds a call counter to a copy of candle-core's CPU backend (and to its backward pass, by node
kind), for scripts/kernel-count.sh. Every counted call is one kernel launch (or, for a
convolution, one im2col + GEMM) when the same op runs on candle's CUDA backend.

Usage: python3 patch_candle.py <copy of candle-core's source>
"""
import re
import sys

root = sys.argv[1]

lib = open(f"{root}/src/lib.rs").read()
lib += '''
/// Backend call counter (kernel-count measurement build only).
pub mod opcount {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
    static SITES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    pub fn hit(name: &'static str) {
        *COUNTS.lock().unwrap().entry(name).or_insert(0) += 1;
        if std::env::var_os("KERNEL_COUNT_SITES").is_none() || name.starts_with("node:") {
            return;
        }
        // The first frame in ferrokeras: where the op was asked for.
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let lines: Vec<&str> = bt.lines().map(|l| l.trim()).collect();
        let mut site = String::from("?");
        for (i, l) in lines.iter().enumerate() {
            if let Some(pos) = l.find(": ") {
                let sym = &l[pos + 2..];
                if sym.contains("ferrokeras::") {
                    let at = lines.get(i + 1).copied().unwrap_or("");
                    site = format!("{sym} @ {}", at.rsplit('/').next().unwrap_or(at));
                    break;
                }
            }
        }
        *SITES.lock().unwrap().entry(format!("{name:16} {site}")).or_insert(0) += 1;
    }
    pub fn take() -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *COUNTS.lock().unwrap())
    }
    pub fn take_sites() -> BTreeMap<String, u64> {
        std::mem::take(&mut *SITES.lock().unwrap())
    }
}
'''
open(f"{root}/src/lib.rs", "w").write(lib)

p = f"{root}/src/cpu_backend/mod.rs"
s = open(p).read()
start = s.index("impl BackendStorage for CpuStorage")
head, rest = s[:start], s[start:]
names = ["to_dtype", "reduce_op", "cmp", "affine", "avg_pool2d", "max_pool2d", "upsample_nearest2d",
         "powf", "elu", "unary_impl", "binary_impl", "copy2d", "copy_strided_src", "where_cond",
         "conv2d", "conv_transpose2d", "index_select", "gather", "scatter_set", "scatter_add_set",
         "index_add", "matmul", "try_clone", "to_cpu_storage", "const_set", "storage_from_slice",
         "storage_from_cpu_storage", "storage_from_cpu_storage_owned", "rand_uniform", "rand_normal",
         "zeros_impl"]
for n in names:
    generic = n in ("unary_impl", "binary_impl")
    m = re.search(r"\n    fn " + n + (r"<[^{]*\{" if generic else r"\b[^{]*\{"), rest)
    if not m:
        sys.exit(f"candle-core changed: no `fn {n}` in the CPU backend")
    tag = "B::NAME" if generic else f'"{n}"'
    rest = rest[: m.end()] + f"\n        crate::opcount::hit({tag});" + rest[m.end():]
open(p, "w").write(head + rest)

p = f"{root}/src/storage.rs"
s = open(p).read()
for k, call in (("1", "c.cpu_fwd(storage, l)?"), ("2", "c.cpu_fwd(s1, l1, s2, l2)?"),
                ("3", "c.cpu_fwd(s1, l1, s2, l2, s3, l3)?")):
    pat = re.compile(r"^(\s*)(let \([a-z]+, shape\) = " + re.escape(call) + ";)", re.M)
    # A ferrokeras graph node's dispatch is a host call (the op it runs is counted as itself).
    hit = f'crate::opcount::hit(if c.name() == "ferrokeras-node" {{ "node-dispatch" }} else {{ "custom{k}" }});'
    s, n = pat.subn(lambda m: f'{m.group(1)}{hit}\n{m.group(1)}{m.group(2)}', s)
    if n != 1:
        sys.exit(f"candle-core changed: custom op {k} dispatch not found")
open(p, "w").write(s)

p = f"{root}/src/backprop.rs"
s = open(p).read()
old = "            if let Some(op) = node.op() {\n                match op {"
if old not in s:
    sys.exit("candle-core changed: backward loop not found")
s = s.replace(old, "            if let Some(op) = node.op() {\n                crate::opcount::hit(op_kind(op));\n                match op {", 1)
kinds = ("Binary Unary Cmp Reduce Matmul Gather Scatter ScatterAdd IndexSelect IndexAdd WhereCond Conv1D "
         "ConvTranspose1D Conv2D ConvTranspose2D AvgPool2D MaxPool2D UpsampleNearest1D UpsampleNearest2D "
         "UpsampleBilinear2D Cat Affine ToDType Copy Broadcast Narrow SliceScatter0 Reshape ToDevice "
         "Transpose Permute Elu Powf CustomOp1 CustomOp2 CustomOp3").split()
arms = "\n".join(f'        Op::{k} {{ .. }} => "node:{k}",' for k in kinds)
s += f"\nfn op_kind(op: &Op) -> &'static str {{\n    match op {{\n{arms}\n    }}\n}}\n"
open(p, "w").write(s)

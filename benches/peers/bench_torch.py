#!/usr/bin/env python3
"""PyTorch training-throughput benchmarks: eager or torch.compile.

(A copy of the peers' script with `--device cuda`, so that it travels with the repository to a
GPU machine; `scripts/gpu-check.sh` runs it there next to ferrokeras.)

Usage (from bench/peers/):
    .venv/bin/python bench_torch.py --workload w4
    .venv/bin/python bench_torch.py --workload w4 --compile

Same workloads as bench_keras.py (see README.md), written as hand-made
training loops: NCHW layout, torch.optim.Adam with its defaults for CPU,
loss and metric sums accumulated on the tensor side like Keras' metrics.
w1 and w1b are the same loop here (there is no custom-vs-built-in
distinction without fit()).

With --compile, the model+loss(+metric) forward is wrapped in
torch.compile (default inductor backend, default mode) and so is the
optimizer step, as in PyTorch's "compiling the optimizer" recipe.
Only the steps after the warm-up are timed. Prints one "RESULT {json}" line.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--compile", action="store_true", help="use torch.compile")
parser.add_argument("--device", default="cpu", help="cpu or cuda (data, models and optimizer state there)")
parser.add_argument("--w4-steps", type=int, default=None, help="timed W4 steps (default: common.W4)")
common.add_common_args(parser)
ARGS = parser.parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(common.THREADS)
torch.set_num_interop_threads(1)
torch.manual_seed(ARGS.seed)
DEV = torch.device(ARGS.device)


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def maybe_compile_fn(fn):
    return torch.compile(fn) if ARGS.compile else fn


def make_opt_step(opt):
    if not ARGS.compile:
        return opt.step

    @torch.compile(fullgraph=False)
    def step():
        opt.step()

    return step


class WithLoss(nn.Module):
    """model + loss + metric terms in one module (what gets compiled)."""

    def __init__(self, model, kind):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x, y):
        out = self.model(x)
        if self.kind == "mse":
            loss = F.mse_loss(out, y)
            metric = (out.detach() - y).abs().sum()  # mae numerator
        else:
            loss = F.cross_entropy(out, y)
            metric = (out.detach().argmax(1) == y).sum()  # accuracy numerator
        return loss, metric


def supervised(workload, model, kind, x, y, batch, epochs, warm_x=None, warm_y=None):
    """Generic fit-like loop: shuffled batches, Adam, loss/metric sums."""
    model = model.to(DEV)
    x, y = x.to(DEV), y.to(DEV)
    warm_x = warm_x.to(DEV) if warm_x is not None else None
    warm_y = warm_y.to(DEV) if warm_y is not None else None
    net = WithLoss(model, kind)
    fwd = maybe_compile_fn(net)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt_step = make_opt_step(opt)

    def one_epoch(xs, ys):
        n = xs.shape[0]
        perm = torch.randperm(n, device=DEV)
        loss_sum = torch.zeros((), device=DEV)
        metric_sum = torch.zeros((), device=DEV)
        steps = 0
        for s in range(0, n, batch):
            idx = perm[s: s + batch]
            xb, yb = xs[idx], ys[idx]
            opt.zero_grad(set_to_none=True)
            loss, metric = fwd(xb, yb)
            loss.backward()
            opt_step()
            with torch.no_grad():
                loss_sum += loss.detach() * xb.shape[0]
                metric_sum += metric
            steps += 1
        return steps, float(loss_sum) / n, float(metric_sum) / n  # .item() = sync

    t0 = time.perf_counter()
    one_epoch(warm_x if warm_x is not None else x, warm_y if warm_y is not None else y)
    warm_s = time.perf_counter() - t0
    snap0 = common.cpu_snapshot()
    t0 = time.perf_counter()
    steps = 0
    for _ in range(epochs):
        st, _, _ = one_epoch(x, y)
        steps += st
    secs = time.perf_counter() - t0
    snap1 = common.cpu_snapshot()
    return secs, steps, x.shape[0] * epochs, warm_s, common.interference(snap0, snap1)


def run_w1():
    xn, yn = common.synth("w1", np.random.default_rng(ARGS.seed))
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)
    model = nn.Linear(32, 1)
    return supervised("w1", model, "mse", x, y, common.W1["batch"], common.W1["epochs"])


def run_w2():
    xn, yn = common.synth("w2", np.random.default_rng(ARGS.seed))
    x, y = torch.from_numpy(xn), torch.from_numpy(yn).long()
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    w = common.W2_WARM_N
    return supervised(
        "w2", model, "ce", x, y, common.W2["batch"], common.W2["epochs"], x[:w], y[:w]
    )


def run_w3():
    xn, yn = common.synth("w3", np.random.default_rng(ARGS.seed))
    x = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous()  # NCHW
    y = torch.from_numpy(yn).long()
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 5 * 5, 10),
    )
    bs = common.W3["batch"]
    w = bs * common.W3["warm_steps"]
    return supervised("w3", model, "ce", x, y, bs, 1, x[:w], y[:w])


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        # Keras "same" with stride 2 on 28x28 pads (0, 1); padding=1 gives
        # the same output sizes (14, 7) and the same FLOPs.
        self.c1 = nn.Conv2d(1, 64, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.fc = nn.Linear(128, 1)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x), 0.2)
        x = F.leaky_relu(self.c2(x), 0.2)
        x = torch.amax(x, dim=(2, 3))  # GlobalMaxPooling2D
        return self.fc(x)


class Generator(nn.Module):
    def __init__(self, latent):
        super().__init__()
        self.fc = nn.Linear(latent, 7 * 7 * 128)
        self.t1 = nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1)  # 7 -> 14
        self.t2 = nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1)  # 14 -> 28
        self.c = nn.Conv2d(128, 1, 7, padding=3)

    def forward(self, z):
        x = F.leaky_relu(self.fc(z), 0.2).view(-1, 128, 7, 7)
        x = F.leaky_relu(self.t1(x), 0.2)
        x = F.leaky_relu(self.t2(x), 0.2)
        return torch.sigmoid(self.c(x))


def run_w4():
    xn, _ = common.synth("w4", np.random.default_rng(ARGS.seed))
    x = torch.from_numpy(xn).permute(0, 3, 1, 2).contiguous()
    latent, bs = common.W4["latent"], common.W4["batch"]
    x = x.to(DEV)
    D, G = Discriminator().to(DEV), Generator(latent).to(DEV)
    d_opt = torch.optim.Adam(D.parameters(), lr=3e-4)
    g_opt = torch.optim.Adam(G.parameters(), lr=3e-4)
    d_opt_step, g_opt_step = make_opt_step(d_opt), make_opt_step(g_opt)
    ones, zeros = torch.ones(bs, 1, device=DEV), torch.zeros(bs, 1, device=DEV)

    def d_loss_fn(real, z, noise):
        with torch.no_grad():
            fake = G(z)
        combined = torch.cat([fake, real], 0)
        labels = torch.cat([ones, zeros], 0) + 0.05 * noise
        return F.binary_cross_entropy_with_logits(D(combined), labels)

    def g_loss_fn(z):
        return F.binary_cross_entropy_with_logits(D(G(z)), zeros)

    d_loss_c, g_loss_c = maybe_compile_fn(d_loss_fn), maybe_compile_fn(g_loss_fn)
    d_params = list(D.parameters())
    sums = torch.zeros(2, device=DEV)

    def step(real):
        z = torch.randn(bs, latent, device=DEV)
        noise = torch.rand(2 * bs, 1, device=DEV)
        d_opt.zero_grad(set_to_none=True)
        d_loss = d_loss_c(real, z, noise)
        d_loss.backward()
        d_opt_step()
        # Generator step: gradients only for G's weights (like the tape in
        # the Keras guide), so D's weight gradients are not computed.
        for p in d_params:
            p.requires_grad_(False)
        z = torch.randn(bs, latent, device=DEV)
        g_opt.zero_grad(set_to_none=True)
        g_loss = g_loss_c(z)
        g_loss.backward()
        g_opt_step()
        for p in d_params:
            p.requires_grad_(True)
        with torch.no_grad():
            sums[0] += d_loss.detach()
            sums[1] += g_loss.detach()

    t0 = time.perf_counter()
    for i in range(common.W4["warm_steps"]):
        step(x[i * bs: (i + 1) * bs])
    float(sums[0])
    warm_s = time.perf_counter() - t0
    steps = ARGS.w4_steps or common.W4["steps"]
    perm = torch.randperm(x.shape[0], device=DEV)
    sync()
    snap0 = common.cpu_snapshot()
    t0 = time.perf_counter()
    for i in range(steps):
        j = i % (x.shape[0] // bs)
        step(x[perm[j * bs: (j + 1) * bs]])
    float(sums[0])  # sync (no-op on CPU, kept for symmetry)
    secs = time.perf_counter() - t0
    snap1 = common.cpu_snapshot()
    return (secs, steps, steps * bs, warm_s,
            common.interference(snap0, snap1))


def main():
    wl = ARGS.workload
    t_start = time.perf_counter()
    fn = {"w1": run_w1, "w1b": run_w1, "w2": run_w2, "w3": run_w3, "w4": run_w4}[wl]
    secs, steps, samples, warm_s, interf = fn()
    res = common.rate_fields(wl, secs, steps, samples)
    res.update(interf)
    res.update(
        framework="torch-compile" if ARGS.compile else "torch-eager",
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=str(DEV) + (" " + torch.cuda.get_device_name() if DEV.type == "cuda" else ""),
        interop_threads=torch.get_num_interop_threads(),
        warmup_s=round(warm_s, 2),
        wall_incl_warmup_s=round(time.perf_counter() - t_start, 2),
        env=common.env_facts(),
    )
    common.emit(res)


if __name__ == "__main__":
    main()

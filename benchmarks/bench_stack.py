"""Forward and backward of a stack of models on shared probes: `NetworkStack.forward` now
(grouped convolutions for CNNs; MLPs unchanged, a control) against the `torch.func.vmap`
form it used for every network until session 19, side by side.

    python benchmarks/bench_stack.py                # 1 and 2 threads, Fashion-MNIST shapes

This is the LPS function branch's inner loop (probes through every model of a batch, the
gradient back to the probes). Prints the median of interleaved repeats and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from bench_lps import random_cnns, random_mlps
from paramsim.weights import NetworkStack

OPS = {
    "relu": torch.relu,
    "maxpool2": lambda h: F.max_pool2d(h, 2),
    "gap": lambda h: h.mean(dim=(-2, -1)),
    "flatten": lambda h: h.flatten(1),
}


def vmap_forward(stack: NetworkStack, x: torch.Tensor) -> torch.Tensor:
    """The previous implementation (up to session 19): one model's layers in their stored
    order, vectorised over the models by `torch.func.vmap`."""
    t = stack.template

    def one(ws, bs):
        h = x
        for name in t.input_ops:
            h = OPS[name](h)
        for lay, w, b in zip(t.layers, ws, bs, strict=True):
            h = (
                F.linear(h, w, b)
                if lay.kind == "linear"
                else F.conv2d(h, w, b, padding=lay.padding)
            )
            for name in lay.post:
                h = OPS[name](h)
        return h

    return torch.func.vmap(one)(stack.weights, stack.biases)


def step_seconds(forward, stack: NetworkStack, probes: torch.Tensor, train: bool) -> float:
    """One forward (and with `train` one backward to the probes, as in an LPS fit step)."""
    start = time.perf_counter()
    if train:
        forward(stack, probes.detach().requires_grad_(True)).square().sum().backward()
    else:
        with torch.no_grad():
            forward(stack, probes)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=128, help="models per stack (an LPS batch)")
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    cases = {
        "cnn 8-16-32, 2 pools, GAP, 28x28": random_cnns(
            args.models, channels=(8, 16, 32), input_shape=(1, 28, 28), pools=(0, 1)
        ),
        "cnn 8-16, pool after conv 1, 28x28": random_cnns(
            args.models, channels=(8, 16), input_shape=(1, 28, 28), pools=(0,)
        ),
        "mlp 784-32-32-2": random_mlps(args.models, (784, 32, 32, 2), input_shape=(1, 28, 28)),
    }
    forms = {"vmap": vmap_forward, "now": NetworkStack.forward}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for name, nets in cases.items():
            stack = NetworkStack.from_networks(nets)
            probes = torch.randn(args.probes, *nets[0].input_shape)
            diff = (vmap_forward(stack, probes) - stack.forward(probes)).abs().max().item()
            for train in (True, False):
                times: dict[str, list[float]] = {k: [] for k in forms}
                for _ in range(args.repeats):  # interleaved: load drifts hit both alike
                    for k, f in forms.items():
                        times[k].append(step_seconds(f, stack, probes, train))
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                print(
                    f"{threads} thread(s) | {name} | "
                    f"{'forward+backward' if train else 'forward, no grad'} | "
                    f"{args.models} models x {args.probes} probes | vmap {med['vmap']:.1f} ms | "
                    f"now {med['now']:.1f} ms | speed-up "
                    f"{med['vmap'] / med['now']:.2f}x | max |diff| {diff:.1e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

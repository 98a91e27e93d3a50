"""Throughput (models per second) of every fixed similarity method on a zoo.

    python benchmarks/bench_features.py ZOO [--threads 1,2] [--methods ...]

Each method computes its full similarity over all of the zoo's models (the way
`paramsim eval` uses it); models/s is the zoo size over that time. Loading is timed apart.
"""

from __future__ import annotations

import argparse
import time

import torch

from paramsim.features import FIXED_METHODS, Context, get_method
from paramsim.zoo import open_zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--methods", default=",".join(FIXED_METHODS))
    args = parser.parse_args()
    zoo = open_zoo(args.zoo)
    start = time.perf_counter()
    networks = zoo.networks()
    context = Context(zoo.dataset())
    print(f"{zoo.path}: {len(networks)} models loaded in {time.perf_counter() - start:.2f} s")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in args.methods.split(","):
            method = get_method(name)
            start = time.perf_counter()
            method.similarity(networks, context)
            seconds = time.perf_counter() - start
            print(
                f"threads={threads} {name:8s} {seconds:8.3f} s  "
                f"{len(networks) / seconds:10.0f} models/s"
            )


if __name__ == "__main__":
    main()

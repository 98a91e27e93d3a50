"""Ray's cost per shard against a shard's training time, on this machine.

    python benchmarks/bench_ray.py --shard-size 33 --cpus 1

Builds the same zoo twice, in this process and through `--executor ray` on a local Ray
instance of --cpus CPUs, checks the two zoos are equal, and prints: Ray's start-up, the
round trip of an empty task on warm workers, the training seconds per shard (measured
inside the job) and the wall time per shard of each build. With --cpus 1 nothing runs in
parallel, so (Ray wall - training time) / shards is Ray's overhead per shard: scheduling,
shipping plans out and tensors back, and the workers' first imports.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path


def _noop(_shared, job):
    return job


def shard_seconds(zoo: Path) -> list[float]:
    with sqlite3.connect(zoo / "registry.sqlite") as conn:
        return [s for (s,) in conn.execute("SELECT seconds FROM shards ORDER BY name")]


def fingerprint(zoo: Path) -> list:
    with sqlite3.connect(zoo / "registry.sqlite") as conn:
        return conn.execute("SELECT name, sha256 FROM shards ORDER BY name").fetchall()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="digits-pairs")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--models-per-task", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=33)
    ap.add_argument("--cpus", type=int, default=1, help="CPUs of the local Ray instance")
    args = ap.parse_args()

    import ray
    import torch

    from paramsim.executors import RayExecutor
    from paramsim.zoo import build_zoo, load_recipe

    torch.set_num_threads(1)  # the Ray tasks run on one thread each; compare like with like
    recipe = load_recipe(args.recipe).with_overrides(
        tasks=args.tasks, models_per_task=args.models_per_task, shard_size=args.shard_size
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        local, remote = Path(tmp) / "local", Path(tmp) / "ray"
        start = time.perf_counter()
        build_zoo(recipe, local, progress=False)
        local_wall = time.perf_counter() - start
        local_train = shard_seconds(local)

        start = time.perf_counter()
        ray.init(  # as `--executor ray` starts a private instance (workers not niced)
            address="local",
            num_cpus=args.cpus,
            include_dashboard=False,
            _system_config={"worker_niceness": 0},
        )
        startup = time.perf_counter() - start
        with RayExecutor() as ex:
            start = time.perf_counter()
            list(ex.map(_noop, None, range(20)))  # starts the workers
            first = time.perf_counter() - start
            start = time.perf_counter()
            list(ex.map(_noop, None, range(200)))
            noop_ms = (time.perf_counter() - start) / 200 * 1e3
            start = time.perf_counter()
            build_zoo(recipe, remote, progress=False, executor=ex)
            ray_wall = time.perf_counter() - start
        ray.shutdown()
        ray_train = shard_seconds(remote)
        same = fingerprint(local) == fingerprint(remote)

    n = len(local_train)
    rest_local = (local_wall - sum(local_train)) / n
    rest_ray = (ray_wall - sum(ray_train)) / n
    print(f"recipe {recipe.name}: {n} shards of up to {args.shard_size} models")
    print(f"ray.init (local, {args.cpus} CPU): {startup:.1f} s; first 20 empty tasks {first:.1f} s")
    print(f"empty task round trip, warm workers: {noop_ms:.2f} ms")
    print(
        f"local build: {local_wall:.1f} s wall, {sum(local_train) / n:.3f} s training and "
        f"{rest_local:.3f} s else per shard"
    )
    print(
        f"ray build:   {ray_wall:.1f} s wall, {sum(ray_train) / n:.3f} s training and "
        f"{rest_ray:.3f} s else per shard"
    )
    print(f"Ray's overhead per shard: {rest_ray - rest_local:.3f} s")
    print(f"zoos equal (shard checksums): {same}")


if __name__ == "__main__":
    main()

"""Against a real Ray cluster on this machine: two nodes of one CPU each (one cluster for the
whole module). A zoo built across them equals the local build; a node removed mid-build or
mid-embedding costs its tasks, which are retried, and the result is the same."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tests.scale.helpers import fingerprint, small_recipe  # noqa: E402

from paramsim.cli import main  # noqa: E402
from paramsim.embed_bulk import collect_items, embed_chunk, embed_items  # noqa: E402
from paramsim.errors import ParamsimError  # noqa: E402
from paramsim.executors import RayExecutor, make_executor  # noqa: E402
from paramsim.lps import LPS  # noqa: E402
from paramsim.zoo import build_zoo  # noqa: E402

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}


def _address_file() -> Path:
    try:
        from ray._common.utils import get_ray_address_file

        return Path(get_ray_address_file(None))
    except ImportError:  # other Ray versions: the default temp folder
        return Path("/tmp/ray/ray_current_cluster")


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, 1 CPU each, all on 127.0.0.1; yields (cluster, the
    worker node). Workers import this checkout's paramsim (PYTHONPATH), not another copy."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    import paramsim

    saved = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "PYTHONPATH")}
    # loopback only (see conftest.py); Ray read the variable at import, so set its constant too
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    saved_constant = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    src = str(Path(paramsim.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (src, saved["PYTHONPATH"]) if p)
    _address_file().unlink(missing_ok=True)  # a killed run's file makes ray.init join a corpse
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            **NODE,
            # notice a dead node within ~2 s, so its tasks are retried promptly
            # and run workers at normal priority (Ray's niceness 15 starves them under load)
            "_system_config": {
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 4,
                "worker_niceness": 0,
            },
        },
    )
    worker = c.add_node(**NODE)
    c.wait_for_nodes()
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    try:
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()
        _address_file().unlink(missing_ok=True)
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _recorded(fn, marks: Path):
    """`fn` writing which node started and finished each job (to show a job was lost)."""

    def run(shared, job):
        import time
        import uuid

        node = ray.get_runtime_context().get_node_id()
        key = getattr(job, "name", None) or str(job[0].ref)
        (marks / f"start-{node}-{uuid.uuid4().hex}").write_text(key)
        time.sleep(0.3)  # long enough that the removed node is always mid-job
        out = fn(shared, job)
        (marks / f"done-{node}-{uuid.uuid4().hex}").write_text(key)
        return out

    return run


def _warm(node) -> None:
    """Start a worker process on `node` with paramsim imported, so that node takes jobs at
    once (a cold worker imports torch first, and on a loaded machine the other node may
    finish every job before it is ready)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def load():
        import paramsim.embed_bulk
        import paramsim.zoo.build  # noqa: F401

    pinned = NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
    ray.get(ray.remote(load).options(num_cpus=1, scheduling_strategy=pinned).remote())


class _RemovesNode(RayExecutor):
    """Removes a worker node (without a graceful stop) as soon as it has started a job, so
    that job is lost with it and must be retried on the other node."""

    def __init__(self, cluster, node, marks: Path) -> None:
        super().__init__(cluster.address)
        _warm(node)
        self._cluster, self._node, self.marks = cluster, node, marks
        marks.mkdir()
        self.removed = threading.Event()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(0.02):
            if any(self.marks.glob(f"start-{self._node.node_id}-*")):
                self._cluster.remove_node(self._node, allow_graceful=False)
                self.removed.set()
                return

    def map(self, fn, shared, jobs):
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True)
        watcher.start()
        try:
            yield from super().map(_recorded(fn, self.marks), shared, jobs)
        finally:
            stop.set()
            watcher.join()

    def retried_jobs(self) -> set[str]:
        """Jobs the removed node started that another node started again (retried)."""
        node = self._node.node_id
        here = {p.read_text() for p in self.marks.glob(f"start-{node}-*")}
        elsewhere = {p.read_text() for p in self.marks.glob("start-*") if node not in p.name}
        return here & elsewhere


def _alive_nodes(expect: int, wait_s: float = 60.0) -> int:
    """The number of live nodes, polled until it is `expect` or `wait_s` has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = len([n for n in ray.nodes() if n["Alive"]])
        if alive == expect or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_zoo_built_across_two_nodes_equals_the_local_build(cluster, local_zoo, tmp_path):
    c, _ = cluster
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    recipe = tmp_path / "small.toml"  # small_recipe() as a file
    recipe.write_text(
        'base = "digits-pairs"\ntasks = "0-1,0-2,3-4"\nmodels_per_task = 2\n'
        "steps = [30, 50]\nshard_size = 1\n"
    )
    out = tmp_path / "zoo"
    args = ["zoo", "build", str(recipe), "--out", str(out), "--threads", "1", "-q"]
    assert main([*args, "--executor", "ray", "--address", c.address]) == 0
    assert fingerprint(out) == fingerprint(local_zoo)
    assert ray.is_initialized()  # a connection the executor did not make stays open


def test_a_node_removed_mid_build_still_gives_the_same_zoo(cluster, local_zoo, tmp_path):
    c, worker = cluster
    ex = _RemovesNode(c, worker, tmp_path / "marks")
    build_zoo(small_recipe(), tmp_path / "zoo", progress=False, executor=ex)
    assert fingerprint(tmp_path / "zoo") == fingerprint(local_zoo)
    if not ex.removed.is_set():  # a scheduling race: the other node took every job first
        pytest.skip("the worker node started no job before the others finished; nothing to lose")
    assert _alive_nodes(expect=1) == 1  # the GCS may take a moment to mark it dead
    assert ex.retried_jobs()  # a shard was lost with the node and retried


def test_bulk_embedding_on_the_cluster(cluster, tiny_zoo, lps_dir, tmp_path):
    c, _ = cluster
    node = c.add_node(**NODE)  # back to two nodes after the removal above
    c.wait_for_nodes()
    items = collect_items([str(tiny_zoo)])
    lps = LPS.load(lps_dir)
    local, local_archs = embed_items(items, lps, chunk_size=2)

    # a chunk that fails once (a flaky read) is retried; each model comes back once
    marks = tmp_path / "marks"
    marks.mkdir()

    def flaky(lps_, chunk):
        first = marks / f"failed-{chunk[0].local_id}"
        if chunk[0].local_id == 4 and not first.exists():
            first.touch()
            raise OSError("shared file system hiccup")
        (marks / f"done-{chunk[0].local_id}").touch(exist_ok=False)  # twice would raise
        return embed_chunk(lps_, chunk)

    emb, archs = embed_items(
        items, lps, chunk_size=2, executor=RayExecutor(c.address), chunk_fn=flaky
    )
    assert (marks / "failed-4").exists()
    assert sorted(p.name for p in marks.glob("done-*")) == [f"done-{i}" for i in (0, 2, 4, 6, 8)]
    np.testing.assert_allclose(emb, local, atol=1e-6)
    assert archs == local_archs

    # the worker node removed while it embeds a chunk
    ex = _RemovesNode(c, node, tmp_path / "marks2")
    emb2, _ = embed_items(items, lps, chunk_size=2, executor=ex)
    np.testing.assert_allclose(emb2, local, atol=1e-6)
    removed, retried = ex.removed.is_set(), ex.retried_jobs()
    # the command line
    out = tmp_path / "e.npy"
    args = ["embed", str(tiny_zoo), "--model", str(lps_dir), "--out", str(out), "-q"]
    assert main([*args, "--executor", "ray", "--address", c.address, "--chunk-size", "4"]) == 0
    np.testing.assert_allclose(np.load(out), local, atol=1e-6)
    assert not (tmp_path / ".e.npy.parts").exists()
    if not removed:  # a scheduling race: the other node took every job first
        pytest.skip("the worker node started no job before the others finished; nothing to lose")
    assert retried  # a chunk was lost with the node and retried


def test_worker_errors_and_missing_gpus_are_one_line(cluster, capsys, tmp_path):
    c, _ = cluster

    def no_data(_shared, _job):
        raise ParamsimError("dataset directory /data/cifar not found; copy it to every node")

    with pytest.raises(ParamsimError) as err, RayExecutor(c.address) as ex:
        list(ex.map(no_data, None, [1, 2]))
    msg = str(err.value)
    assert msg.startswith("on node ") and "/data/cifar not found" in msg and "\n" not in msg
    with pytest.raises(ParamsimError, match="cluster has no GPU"):
        make_executor("ray", c.address, device="cuda")
    out = tmp_path / "zoo"
    args = ["zoo", "build", "digits-pairs", "--out", str(out), "--tasks", "0-1"]
    assert main([*args, "--executor", "ray", "--address", c.address, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not out.exists()

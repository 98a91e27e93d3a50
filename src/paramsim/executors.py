"""Where independent jobs run: in this process (the default) or as Ray tasks on a cluster.

A driver gives an executor a module-level function, one shared object and a list of jobs;
the executor yields `(job number, result)` as jobs finish. Workers only compute and return:
the driver alone writes files, so a lost worker costs its job's time and nothing on disk,
and a rerun resumes from what the driver committed. Ray is imported only when asked for.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from paramsim.errors import ParamsimError

EXECUTORS = ("local", "ray")
RAY_HINT = "install it with `pip install -c constraints.txt -e '.[ray]'`"


class LocalExecutor:
    """Runs each job in this process, in order (no copies of the shared object)."""

    name = "local"

    def map(
        self, fn: Callable[[Any, Any], Any], shared: Any, jobs: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        for i, job in enumerate(jobs):
            yield i, fn(shared, job)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _run_job(fn: Callable[[Any, Any], Any], shared: Any, job: Any, threads: int) -> Any:
    """What a Ray worker runs: the job, with torch threads matching the task's CPUs, and a
    user error named with the node it happened on (a worker may lack the data set)."""
    import torch

    torch.set_num_threads(threads)
    try:
        return fn(shared, job)
    except ParamsimError as exc:
        raise ParamsimError(f"on node {socket.gethostname()}: {exc}") from None


class RayExecutor:
    """Runs each job as a Ray task; the shared object is put in the object store once.

    `address`: None starts a private local Ray instance, "auto" joins the cluster started on
    this machine with `ray start`, "HOST:PORT" joins that cluster. When this process is already
    connected to Ray (a test's cluster, a notebook), that connection is used as it is.
    A task lost with its node is resubmitted up to `max_retries` times; an OSError inside a
    job (a flaky shared file system) is retried too. At most `in_flight` tasks wait at once
    (default: twice the cluster's CPUs), so results never pile up in the object store.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int = 1,
        num_gpus: float = 0.0,
        max_retries: int = 3,
        in_flight: int | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ParamsimError(
                f"--executor ray needs Ray, which is not installed; {RAY_HINT}"
            ) from None
        self._ray = ray
        self.num_cpus = max(1, int(num_cpus))
        self.num_gpus = float(num_gpus)
        self.max_retries = int(max_retries)
        self._owned = False
        if not ray.is_initialized():
            self._connect(address)
            self._owned = True
        resources = ray.cluster_resources()
        if self.num_gpus and resources.get("GPU", 0) < self.num_gpus:
            self.close()
            raise ParamsimError(
                "--device cuda asked for, but the Ray cluster has no GPU; use --device cpu "
                "or start GPU nodes with `ray start --num-gpus N`"
            )
        self.in_flight = in_flight or max(2, 2 * int(resources.get("CPU", 1)))

    def _connect(self, address: str | None) -> None:
        import logging

        ray = self._ray
        if address not in (None, "auto"):
            _check_reachable(address)
        local = {
            # Ray runs workers at niceness 15 by default; on a machine shared with other work
            # that starves the training (3-9x slower measured here), so a private instance
            # runs them at the driver's priority
            "_system_config": {"worker_niceness": 0},
            "include_dashboard": False,
        }
        try:
            ray.init(
                address="local" if address is None else address,
                logging_level=logging.WARNING,
                **(local if address is None else {}),
            )
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            where = "a local Ray instance" if address is None else f"the Ray cluster at {address}"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ParamsimError(
                f"cannot start or join {where} ({first}); start one with `ray start --head` "
                "or check --address"
            ) from None

    def map(
        self, fn: Callable[[Any, Any], Any], shared: Any, jobs: Sequence[Any]
    ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = ray.remote(_run_job).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_retries=self.max_retries,
            retry_exceptions=[OSError],
        )
        shared_ref = ray.put(shared)
        pending: dict[Any, int] = {}
        todo = iter(enumerate(jobs))

        def submit() -> None:
            for i, job in todo:
                pending[remote.remote(fn, shared_ref, job, self.num_cpus)] = i
                if len(pending) >= self.in_flight:
                    return

        try:
            submit()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                result = self._get(ready[0], i)
                submit()
                yield i, result
        finally:
            for ref in pending:
                ray.cancel(ref)

    def _get(self, ref: Any, i: int) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, ParamsimError):
                raise ParamsimError(str(exc.cause)) from None
            raise
        except ray.exceptions.RayError as exc:
            raise ParamsimError(
                f"job {i} was lost on the Ray cluster ({type(exc).__name__}) after "
                f"{self.max_retries} retries; rerun the same command to resume"
            ) from None

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, on an address nothing listens on (Ray itself retries
    for a long time before it gives up)."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("ray://")
    if not sep or not host or not port.isdigit():
        raise ParamsimError(f"--address must be auto or HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ParamsimError(
            f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); start one there "
            "with `ray start --head` or fix --address"
        ) from None


def make_executor(
    name: str, address: str | None = None, *, device: str = "cpu", threads: int | None = None
) -> LocalExecutor | RayExecutor:
    """The executor a command asked for; `--address` without `--executor ray` is an error."""
    if name == "local":
        if address:
            raise ParamsimError("--address needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(
            address,
            num_cpus=threads or 1,
            num_gpus=1.0 if str(device).startswith("cuda") else 0.0,
        )
    raise ParamsimError(f"unknown executor {name!r}; use {' or '.join(EXECUTORS)}")

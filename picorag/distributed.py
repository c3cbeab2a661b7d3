"""Builds on Ray: the same shard pipeline with chunking, analysis and embedding as Ray tasks.

The driver (the `picorag build` process) reads the input, refuses duplicate ids, and sends each
batch of records to a task running `shard.process`; it writes the returned shards in input order
and merges and commits them as a local build does, so the KB is the same as a single-process
build's. Results travel back through Ray's object store, so workers need no shared filesystem;
they need picorag (and the encoder's package) installed. At most 2 tasks per worker are in flight,
which bounds the driver's memory.

    picorag build KB --from data/ --dense minilm --ray            # a local Ray with 2 workers
    picorag build KB --from data/ --dense minilm --ray HOST:6379  # an existing cluster

>>> ray_mapper("local", workers=0)
Traceback (most recent call last):
...
picorag.records.PicoragError: need at least one Ray worker (got 0)
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .records import PicoragError

LOCAL_WORKERS = 2


def ray_mapper(address: str | None = "local", workers: int | None = None) -> Callable[..., Iterator[Any]]:
    """A `map` that runs each call as a Ray task and yields results in input order. `address`
    "local" (or None) starts a Ray instance for the build with `workers` CPUs (default 2);
    anything else is a cluster address given to `ray.init`."""
    workers = LOCAL_WORKERS if workers is None else workers
    if workers < 1:
        raise PicoragError(f"need at least one Ray worker (got {workers})")
    try:
        import ray
    except ImportError:
        raise PicoragError("--ray needs the 'ray' package: pip install 'ray==2.60.0'") from None

    def mapper(fn: Callable[[Any], Any], items: Iterator[Any]) -> Iterator[Any]:
        started = not ray.is_initialized()
        if started:
            try:
                if address in (None, "local"):
                    # workers must import picorag from wherever this process does
                    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in _import_paths() if p)}}
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                             configure_logging=False, runtime_env=env)
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as e:  # ray raises ConnectionError, RuntimeError, ValueError …
                raise PicoragError(f"cannot start or reach Ray at {address}: {e}") from None
        size = 2 * max(workers, int(ray.cluster_resources().get("CPU", workers)))
        task = ray.remote(num_cpus=1, max_retries=2)(fn)
        pending: deque[Any] = deque()
        try:
            for item in items:
                pending.append(task.remote(item))
                if len(pending) >= size:
                    yield _get(ray, pending.popleft())
            while pending:
                yield _get(ray, pending.popleft())
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    return mapper


def _get(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.as_instanceof_cause()
        if isinstance(cause, PicoragError):
            raise PicoragError(str(cause).splitlines()[-1]) from None
        raise


def _import_paths() -> list[str]:
    import picorag

    return [os.path.dirname(os.path.dirname(os.path.abspath(picorag.__file__))), os.environ.get("PYTHONPATH", "")]

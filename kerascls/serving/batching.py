"""Server-side batching: concurrent predict requests merged into one model call.

The local counterpart of ``--enable_batching --batching_parameters_file``. Each (version,
signature) pair has a queue and ``num_batch_threads`` workers; a worker takes the oldest request,
waits up to ``batch_timeout_micros`` for more, concatenates the requests whose inputs have the same
per-example shapes (up to ``max_batch_size`` rows, padded to the next ``allowed_batch_sizes``
entry when that is set), runs the model once and hands each request its rows. When a merged batch
fails, its requests are run one by one so that one bad request never fails its neighbours.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from kerascls.serving.configs import BatchingConfig
from kerascls.serving.status import ServingError, invalid


class _Task:
    __slots__ = ("inputs", "rows", "done", "result", "error")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int):
        self.inputs = inputs
        self.rows = rows
        self.done = threading.Event()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None

    def key(self):
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in self.inputs.items()))


class _Queue:
    def __init__(self, batcher: Batcher, servable, sig):
        self.batcher = batcher
        self.servable = servable
        self.sig = sig
        self.cond = threading.Condition()
        self.tasks: deque[_Task] = deque()
        self.rows = 0
        self.closed = False
        self.threads = [
            threading.Thread(
                target=self._work, daemon=True, name=f"batch-{servable.name}-{servable.version}-{i}"
            )
            for i in range(batcher.config.num_batch_threads)
        ]
        for t in self.threads:
            t.start()

    def submit(self, task: _Task) -> None:
        cfg = self.batcher.config
        with self.cond:
            if self.closed:
                raise ServingError("UNAVAILABLE", "the model version is being unloaded")
            if self.rows + task.rows > cfg.max_enqueued_batches * cfg.max_batch_size:
                raise ServingError(
                    "UNAVAILABLE",
                    "The batch scheduling queue to which this task was submitted is full",
                )
            self.tasks.append(task)
            self.rows += task.rows
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _take(self) -> list[_Task]:
        cfg = self.batcher.config
        limit = self.batcher.execution_limit
        with self.cond:
            while not self.tasks and not self.closed:
                self.cond.wait()
            if not self.tasks:
                return []
            first = self.tasks.popleft()
            batch, rows, key = [first], first.rows, first.key()
            deadline = time.monotonic() + cfg.batch_timeout_micros / 1e6
            while rows < limit:
                match = next(
                    (t for t in self.tasks if t.key() == key and rows + t.rows <= limit), None
                )
                if match is not None:
                    self.tasks.remove(match)
                    batch.append(match)
                    rows += match.rows
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    break
                self.cond.wait(remaining)
            self.rows -= rows
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            self._run(batch)

    def _run(self, batch: list[_Task]) -> None:
        if len(batch) > 1:
            try:
                merged = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
                outputs = self.servable.run(self.sig, self.batcher.pad(merged))
                start = 0
                for t in batch:
                    t.result = {k: v[start : start + t.rows] for k, v in outputs.items()}
                    start += t.rows
                    t.done.set()
                return
            except ServingError:
                pass  # find out which request failed: run them one by one below
            except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request
                for t in batch:
                    t.error = exc
                    t.done.set()
                return
        for t in batch:
            try:
                outputs = self.servable.run(self.sig, self.batcher.pad(t.inputs))
                t.result = {k: v[: t.rows] for k, v in outputs.items()}
            except BaseException as exc:  # noqa: BLE001 - delivered to the waiting request
                t.error = exc
            t.done.set()


class Batcher:
    """Merges concurrent requests to the same version and signature.

    Args:
        config: the batching parameters.
    """

    def __init__(self, config: BatchingConfig):
        self.config = config
        split = config.enable_large_batch_splitting and config.max_execution_batch_size > 0
        self.execution_limit = config.max_execution_batch_size if split else config.max_batch_size
        self._lock = threading.Lock()
        self._queues: dict[tuple[int, str], _Queue] = {}

    def pad(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pad the batch to the next allowed batch size by repeating its first row."""
        sizes = self.config.allowed_batch_sizes
        if not sizes:
            return inputs
        rows = next(iter(inputs.values())).shape[0]
        target = next((s for s in sizes if s >= rows), rows)
        if target == rows or rows == 0:
            return inputs
        return {
            k: np.concatenate([v, np.repeat(v[:1], target - rows, axis=0)])
            for k, v in inputs.items()
        }

    def run(self, servable, sig, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ``inputs``, computed in a batch with other concurrent requests."""
        sizes = {v.shape[0] if v.ndim else -1 for v in inputs.values()}
        if len(sizes) != 1 or -1 in sizes:
            raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
        rows = sizes.pop()
        if rows > self.config.max_batch_size:
            raise invalid(
                f"Task size {rows} is larger than maximum input batch size "
                f"{self.config.max_batch_size}"
            )
        if rows == 0:
            return servable.run(sig, inputs)
        if rows > self.execution_limit:
            parts = [
                self.run(
                    servable, sig, {k: v[i : i + self.execution_limit] for k, v in inputs.items()}
                )
                for i in range(0, rows, self.execution_limit)
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        queue = self._queue(servable, sig)
        task = _Task(inputs, rows)
        queue.submit(task)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _queue(self, servable, sig) -> _Queue:
        key = (id(servable), sig.name)
        with self._lock:
            queue = self._queues.get(key)
            if queue is None or queue.servable is not servable:
                queue = self._queues[key] = _Queue(self, servable, sig)
            return queue

    def forget(self, servable) -> None:
        """Stop the workers of an unloaded servable once its queued requests are done."""
        with self._lock:
            for key in [k for k, q in self._queues.items() if q.servable is servable]:
                self._queues.pop(key).close()

    def close(self) -> None:
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        for q in queues:
            q.close()

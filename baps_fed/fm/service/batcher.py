"""Dynamic micro-batching: requests from several clients run through the FM as one batch.

A SAM forward over B images costs far less than B forwards of one image (one encoder pass, one
batched decoder pass), so a shared FM serving N sites should merge what arrives together. One
worker thread owns the FM; request handlers put a job on a queue and wait on its future. The
worker takes the oldest job, waits at most ``wait_s`` after that job's arrival for more, and runs
every waiting job with the same key as the oldest, up to ``max_batch`` images, as ONE FM call;
then it splits the logits back per job. The key is (H, W, N points or none, box or none): only
equal shapes of the same prompt kinds can be stacked (padding points would change SAM's output,
and a batch is one call with one set of prompt arrays). Jobs of another key wait for the next
call. A job larger than ``max_batch`` runs alone (the FM chunks it itself). ``max_batch=1`` turns
merging off. If a merged call fails, its jobs are run one by one, so only the culprit fails.

Shutdown: ``stop`` closes the batcher under the same lock ``submit`` queues under, so a job is
either queued before the worker's last look at the queue (and run) or refused at once with
``BatcherClosed``; jobs still queued when the worker exits fail with ``BatcherClosed`` rather
than leave their handlers waiting for a result that will never come.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from baps_fed.fm.contract import BlackboxFM


def _concatenate(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    """One field of equal-key jobs stacked (all None together: the key says so)."""
    if arrays[0] is None:
        return None
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class BatcherClosed(RuntimeError):
    """The FM server is shutting down: the job was refused or will never run."""


SHUTTING_DOWN = "the FM server is shutting down"


@dataclass(eq=False)  # identity, not array comparison: jobs are removed from a list
class Job:
    images: np.ndarray  # uint8 [B,H,W,3]
    points: np.ndarray | None  # float32 [B,N,2]
    labels: np.ndarray | None  # [B,N], with points
    boxes: np.ndarray | None = None  # float32 [B,4]
    scope: str = ""  # the tenant whose embedding cache its images may use
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    seconds: float = 0.0  # this job's share of the FM call's time, set before the result

    @property
    def key(self) -> tuple[int, int, int | None, bool]:
        """Jobs with equal keys can be concatenated into one FM call."""
        n_points = None if self.points is None else self.points.shape[1]
        return self.images.shape[1], self.images.shape[2], n_points, self.boxes is not None

    @property
    def n(self) -> int:
        return self.images.shape[0]


@dataclass
class BatchStats:
    fm_calls: int = 0
    requests: int = 0
    images: int = 0
    merged_calls: int = 0  # FM calls holding images from more than one request
    max_requests_per_call: int = 0
    requests_per_call: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "fm_calls": self.fm_calls,
            "requests": self.requests,
            "images": self.images,
            "merged_calls": self.merged_calls,
            "max_requests_per_call": self.max_requests_per_call,
            "requests_per_call": {str(k): v for k, v in sorted(self.requests_per_call.items())},
        }


class MicroBatcher:
    """The FM's only caller: a worker thread draining a queue of jobs in merged batches."""

    def __init__(self, fm: BlackboxFM, max_batch: int = 16, wait_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fm = fm
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_s)
        self._queue: queue.Queue[Job] = queue.Queue()
        self._pending: list[Job] = []
        self._stats = BatchStats()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _stop against submit's put (see the module doc)
        self._thread = threading.Thread(target=self._run, name="fm-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Refuse new jobs, finish what is queued, then end the worker."""
        with self._lock:
            self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._fail_leftovers()  # a worker that never started (or died) leaves jobs behind

    def submit(
        self,
        images: np.ndarray,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None = None,
        scope: str = "",
    ) -> Job:
        """Queue validated inputs; the job's future gets logits float32 [B,H,W] or the error.
        ``scope``: the tenant (its images use only its own embedding cache, even when merged
        with other tenants' jobs into one FM call).

        Raises ``BatcherClosed`` at once after ``stop`` (or once the worker has ended).
        """
        job = Job(images, points, labels, boxes, scope)
        with self._lock:
            if self._stop.is_set():
                raise BatcherClosed(f"{SHUTTING_DOWN}; no new requests are taken")
            self._queue.put(job)
        return job

    def stats(self) -> BatchStats:
        with self._stats_lock:
            s = self._stats
            return BatchStats(
                s.fm_calls,
                s.requests,
                s.images,
                s.merged_calls,
                s.max_requests_per_call,
                Counter(s.requests_per_call),
            )

    # worker side
    def _drain(self, block_s: float | None) -> None:
        """Move queued jobs to the pending list, waiting up to ``block_s`` for the first."""
        try:
            if block_s is None:
                self._pending.append(self._queue.get_nowait())
            else:
                self._pending.append(self._queue.get(timeout=max(block_s, 0.0)))
            while True:
                self._pending.append(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _select(self) -> list[Job]:
        """The oldest job and the waiting jobs of its shape that fit in ``max_batch``."""
        head = self._pending[0]
        chosen, total = [head], head.n
        for job in self._pending[1:]:
            if job.key == head.key and total + job.n <= self.max_batch:
                chosen.append(job)
                total += job.n
        return chosen

    def _ready(self) -> bool:
        head = self._pending[0]
        same = sum(j.n for j in self._pending if j.key == head.key)
        return same >= self.max_batch or time.monotonic() - head.arrived >= self.wait_s

    def _fail_leftovers(self) -> None:
        """Fail every job that will never run; from here on ``submit`` refuses new ones."""
        with self._lock:
            self._stop.set()
            leftovers = list(self._pending)
            self._pending.clear()
            while True:
                try:
                    leftovers.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for job in leftovers:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(
                    BatcherClosed(f"{SHUTTING_DOWN}; this request was not run, retry it later")
                )

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._fail_leftovers()

    def _loop(self) -> None:
        while True:
            if not self._pending:
                # Once _stop is set (under the lock) nothing more is queued, so an empty queue
                # here stays empty.
                if self._stop.is_set() and self._queue.empty():
                    return
                self._drain(0.1)
                continue
            while not self._ready() and not self._stop.is_set():
                remaining = self.wait_s - (time.monotonic() - self._pending[0].arrived)
                self._drain(remaining)
            self._drain(None)
            jobs = self._select()
            for job in jobs:
                self._pending.remove(job)
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if jobs:
                self._execute(jobs)

    def _execute(self, jobs: list[Job]) -> None:
        try:
            images, points, labels, boxes = (
                _concatenate([getattr(j, name) for j in jobs])
                for name in ("images", "points", "labels", "boxes")
            )
            scopes = [j.scope for j in jobs for _ in range(j.n)]
            start = time.perf_counter()
            logits = self.fm.segment(images, points, labels, boxes, scopes=scopes)
            seconds = time.perf_counter() - start
        except Exception as err:
            if len(jobs) > 1:  # find the culprit: only its own request should fail
                for job in jobs:
                    self._execute([job])
                return
            jobs[0].future.set_exception(err)
            return
        self._record(jobs)
        total = sum(j.n for j in jobs)
        offset = 0
        for job in jobs:
            job.seconds = seconds * job.n / total
            job.future.set_result(logits[offset : offset + job.n])
            offset += job.n

    def _record(self, jobs: list[Job]) -> None:
        with self._stats_lock:
            s = self._stats
            s.fm_calls += 1
            s.requests += len(jobs)
            s.images += sum(j.n for j in jobs)
            s.merged_calls += len(jobs) > 1
            s.max_requests_per_call = max(s.max_requests_per_call, len(jobs))
            s.requests_per_call[len(jobs)] += 1

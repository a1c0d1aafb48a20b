"""The batch on a Dask cluster: ``bookrec batch --scheduler tcp://HOST:PORT`` (BOOKREC_DASK_SCHEDULER).

What runs where:

- the driver (the ``bookrec batch`` process) loads and prepares the data, fits the relevance
  model, evaluates, and publishes the books, the blobs, the meta and the ``popular`` tier; it flips
  the version pointer once, after every shard has succeeded;
- each chain of the sampler is one task (chain c prefers worker c mod n); chains are seeded by
  chain number, so the draws do not depend on where they ran;
- the ranked tiers' readers are cut into shards at the single-process batch's chunk boundaries,
  so each list is computed from the same arrays; a shard task ranks and encodes its readers and,
  with a Redis store, writes them straight into the pending version; with SQLite the payloads
  come back to the driver, which writes them in its one transaction.

The read-only inputs every shard needs (the ranker with the serving and relevance models, the
encoder's catalogue) are scattered to every worker once. A killed worker's tasks run again on
another worker; a rewritten shard writes the same bytes under the same keys.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bookrec.batch.payloads import PayloadEncoder
from bookrec.config import Settings
from bookrec.data.prep import IndexMap

log = logging.getLogger(__name__)

TASK_RETRIES = 2  # a task that raised runs again this often; a killed worker's tasks always run again
IN_FLIGHT_PER_THREAD = 2  # shards submitted ahead per worker thread: bounds the scheduler's memory
RESCATTERS = 3  # times the chains' plan or the shards' shared inputs are scattered again after a worker died with them


@dataclass
class ShardShared:
    """What every shard task reads; scattered to every worker once."""

    ranker: Any  # bookrec.model.foryou.ForYouRanker (its interactions hold every reader's user id)
    encoder: PayloadEncoder
    settings: Settings
    store_url: str | None


@dataclass
class ShardResult:
    tier: str
    users: int
    payloads: list[tuple[int, bytes]] | None  # back to the driver (a store that takes no shards)
    written: dict  # what the worker wrote into the pending version (users, bytes, raw_bytes)
    seconds: float  # the task's wall time on its worker

    @property
    def nbytes(self) -> int:
        return sum(len(p) for _, p in self.payloads) if self.payloads else 0


def rank_shard(shared: ShardShared, tier: str, rows: np.ndarray, posterior: Any, version: str | None) -> ShardResult:
    """Rank and encode one shard of a ranked tier (``posterior``: a ``bookrec.model.foryou.ReaderPosterior``);
    with ``version``, write it into that pending version."""
    started = time.perf_counter()
    block = shared.ranker.rank(rows, posterior)
    user_ids = shared.ranker.interactions.users.values[block.users]
    payloads = list(shared.encoder.ranked_block(user_ids, tier, block))
    if version is None:
        return ShardResult(tier, len(payloads), payloads, {}, time.perf_counter() - started)
    from bookrec.store import open_store_from_settings

    with open_store_from_settings(shared.settings, shared.store_url) as store:
        written = store.write_shard(version, payloads)
    return ShardResult(tier, len(payloads), None, written, time.perf_counter() - started)


def chain_task(run_chain: Callable, plan: Any, chain_no: int, threads: int):
    """One chain on a worker, its parallel kernels on its share of the worker's threads."""
    from bookrec.model.kernels import kernel_threads

    with kernel_threads(threads):
        return run_chain(plan, chain_no)


def shard_task(*args) -> ShardResult:
    """One shard on a worker, its kernels on one thread: the worker runs a shard per thread."""
    from bookrec.model.kernels import kernel_threads

    with kernel_threads(1):
        return rank_shard(*args)


def wire_bytes(value: Any) -> int:
    """The size of ``value`` as Dask sends it to a worker: the frames of its own serialisation."""
    from distributed.protocol import serialize

    _, frames = serialize(value)
    return sum(memoryview(frame).nbytes for frame in frames)


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class EngineRecord:
    """What the meta records about the engine (the only part of the meta that depends on it)."""

    scheduler: str
    workers: int = 0
    threads: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    bytes_to_workers: dict[str, int] = field(default_factory=dict)
    bytes_from_workers: dict[str, int] = field(default_factory=dict)
    peak_rss_bytes: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> process -> bytes
    shard_seconds: dict[str, float] = field(default_factory=dict)  # tier -> summed task wall time

    def as_meta(self) -> dict:
        return {"name": "dask", "scheduler": self.scheduler, "workers": self.workers, "threads": self.threads,
                "tasks": dict(self.tasks), "bytes_to_workers": dict(self.bytes_to_workers),
                "bytes_from_workers": dict(self.bytes_from_workers), "peak_rss_bytes": dict(self.peak_rss_bytes),
                "shard_seconds": dict(self.shard_seconds)}


SINGLE_PROCESS = {"name": "single process", "workers": 1, "tasks": {}}


class DaskEngine:
    """A connection to a Dask scheduler and the batch's work on its workers."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        from distributed import Client

        self.client = Client(address, timeout=timeout, set_as_default=False)
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        if not workers:
            self.client.close()
            raise RuntimeError(f"the Dask scheduler at {address} has no workers")
        self.record = EngineRecord(address, len(workers), sum(w.get("nthreads", 1) for w in workers.values()))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _workers(self) -> list[str]:
        return sorted(self.client.scheduler_info().get("workers", {}))

    def _scatter(self, what: str, value: Any):
        workers = self._workers()
        future = self.client.scatter(value, broadcast=True, hash=False)
        self.record.bytes_to_workers[what] = self.record.bytes_to_workers.get(what, 0) + wire_bytes(value) * len(workers)
        return future

    def _scatter_again(self, scattered: list, what: str, value: Any) -> None:
        """A worker died holding the only copy of ``value`` (the scheduler's memory manager keeps one
        copy of scattered data), cancelling every task that reads it: scatter it again, at most
        RESCATTERS times, as the new last entry of ``scattered``."""
        if len(scattered) > RESCATTERS:
            raise RuntimeError(f"the workers lost the {what} inputs too often")
        log.warning("a worker took the %s inputs with it: scattering them again", what)
        scattered.append(self._scatter(what, value))

    def map_chains(self, run_chain: Callable, plan: Any, chains: list[int]) -> list:
        """``BPMF.fit(map_chains=...)``: each chain a task, chain c preferring worker c mod n."""
        scattered = [self._scatter("chains", plan)]  # the last is current; earlier ones were lost with a worker
        info = self.client.scheduler_info()["workers"]
        workers = sorted(info)
        home = {c: workers[c % len(workers)] for c in chains}
        # Chains sharing a worker share its threads, so that no core runs two kernel threads.
        threads = {c: max(1, info[w].get("nthreads", 1) // sum(h == w for h in home.values())) for c, w in home.items()}

        def submit(c: int):
            return self.client.submit(chain_task, run_chain, scattered[-1], c, threads[c], pure=False,
                                      key=f"bookrec-chain-{c}-{scattered[-1].key}", workers=[home[c]],
                                      allow_other_workers=True, retries=TASK_RETRIES)

        futures = {c: submit(c) for c in chains}
        runs: dict[int, Any] = {}
        try:
            while len(runs) < len(chains):
                c = next(c for c in chains if c not in runs)
                try:
                    runs[c] = futures[c].result()
                except Exception:
                    if scattered[-1].status == "finished":  # the plan is intact: the chain's own error
                        raise
                    self._scatter_again(scattered, "chains", plan)
                    futures.update({c: submit(c) for c in chains if c not in runs})
        finally:
            self.client.cancel(scattered + list(futures.values()))
        self.record.tasks["chains"] = len(chains)
        self.record.bytes_from_workers["chains"] = int(sum(run.nbytes for run in runs.values()))
        return [runs[c] for c in chains]

    def run_shards(self, shared: ShardShared, shards: Iterator[tuple[str, np.ndarray, Any]], version: str | None,
                   on_done: Callable[[ShardResult], None]) -> None:
        """Run every shard (tier, rows, posterior), at most a few per worker thread at a time, calling
        ``on_done`` on the driver as each finishes (in completion order). Raises on the first
        shard that fails for good; the shards still running are cancelled."""
        from distributed import as_completed

        from dask.sizeof import sizeof

        scattered = [self._scatter("shards", shared)]  # the last is current; earlier ones were lost with a worker
        limit = max(1, IN_FLIGHT_PER_THREAD * self.record.threads)
        pending = as_completed(loop=self.client.loop)
        submitted = 0
        sent = 0
        shard_of: dict[str, tuple[tuple[str, np.ndarray, Any], Any]] = {}  # key -> (shard, the shared inputs it read)

        def submit(item: tuple[str, np.ndarray, Any], key: str) -> None:
            tier, rows, posterior = item
            future = self.client.submit(shard_task, scattered[-1], tier, rows, posterior, version, key=key, pure=False,
                                        retries=TASK_RETRIES)
            shard_of[future.key] = (item, scattered[-1])
            pending.add(future)

        def submit_next() -> bool:
            nonlocal submitted, sent
            item = next(shards, None)
            if item is None:
                return False
            _, rows, posterior = item
            sent += sizeof(rows) + sizeof(posterior)  # their arrays' sizes: serialising them here as well would cost twice
            submit(item, f"bookrec-shard-{submitted}-{scattered[0].key}")
            submitted += 1
            return True

        try:
            while submitted < limit and submit_next():
                pass
            for future in pending:
                item, read = shard_of.pop(future.key)
                try:
                    result: ShardResult = future.result()
                except Exception:
                    if read.status == "finished":  # its inputs are intact: the shard's own error
                        raise
                    if read is scattered[-1]:  # once per loss: later shards that read it need no other copy
                        self._scatter_again(scattered, "shards", shared)
                    submit(item, f"{future.key}-again-{len(scattered) - 1}")
                    continue
                finally:
                    future.release()
                self._count_shard(result)
                on_done(result)
                submit_next()
        except BaseException:
            self.client.cancel(list(pending.futures))
            raise
        finally:
            self.client.cancel(scattered)
        self.record.tasks["shards"] = submitted
        self.record.bytes_to_workers["shard inputs"] = sent

    def _count_shard(self, result: ShardResult) -> None:
        rec = self.record
        rec.shard_seconds[result.tier] = rec.shard_seconds.get(result.tier, 0.0) + result.seconds
        rec.bytes_from_workers["shards"] = rec.bytes_from_workers.get("shards", 0) + result.nbytes

    def note_peak_memory(self, stage: str) -> None:
        """The peak resident memory so far of the driver and of every worker, after ``stage``."""
        peaks = {"driver": peak_rss_bytes()}
        try:
            peaks.update({f"worker {w}": int(v) for w, v in self.client.run(peak_rss_bytes).items()})
        except Exception as exc:  # a worker gone meanwhile: the figures of the others still count
            log.warning("could not read the workers' peak memory after %s: %s", stage, exc)
        self.record.peak_rss_bytes[stage] = peaks


def trimmed_encoder(encoder: PayloadEncoder) -> PayloadEncoder:
    """The encoder with only the per-work fields a payload shows: the per-edition table and the
    counts are large and encoding never reads them, and the work keys travel as plain strings
    (a fixed-width array is as wide as the longest key, and the map's lookup index is not needed)."""
    c = encoder.catalog
    none = np.zeros(0, dtype=np.int64)
    keys = IndexMap(c.works.values.astype(object))
    return PayloadEncoder(replace(c, works=keys, books=c.books.iloc[:0], publisher=none, n_interactions=none,
                                  n_explicit=none, rating_counts=none.reshape(0, 11)))

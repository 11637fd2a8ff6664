"""Load generator for event-metrics, a Python port of the reference Go load tool.

    python -m bench.load -total 20000 -rate 2000 [-workers 2] [-batch 10] [--json]
    python -m bench.load -protocol segment -batch 100 -key emw_...   # as analytics-python

Flags are Go style (`-total 5`, `-wait=false`, `--json` also works). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import multiprocessing as mp
import queue
import secrets
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue as MPQueue
from multiprocessing.synchronize import Barrier
from threading import BrokenBarrierError
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import msgspec
import numpy as np
import numpy.typing as npt

from bench import sdk_shapes

CHANNELS = ("web", "ios", "android")
ACK_HTTP = frozenset({200, 202})
JSON_HEADERS = {"Content-Type": "application/json"}
PROGRESS_INTERVAL_S = 0.2  # 5 Hz: often enough to watch, rare enough to cost nothing
VERIFY_POLL_S = 0.5
WINDOW_MARGIN_S = 5
START_TIMEOUT_S = 120.0  # spawned workers import numpy/aiohttp before the barrier

if TYPE_CHECKING:  # these generics are not subscriptable at runtime
    ProgressArray = ctypes.Array[ctypes.c_int64]
    ResultQueue = MPQueue[tuple[int, "WorkerResult | str"]]


# --------------------------------------------------------------------------- wire types


class Event(msgspec.Struct):
    event_name: str
    user_id: str
    timestamp: datetime
    idempotency_key: str
    channel: str
    properties: dict[str, int]


class ItemResult(msgspec.Struct):
    index: int
    status: str


class IngestSummary(msgspec.Struct):
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    results: list[ItemResult] = msgspec.field(default_factory=list)


class SdkRejection(msgspec.Struct):
    index: int


class SdkSummary(msgspec.Struct):
    """The 200 answer of /v1/batch and /batch/: rejected messages are listed, not counted."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[SdkRejection] = msgspec.field(default_factory=list)

    def as_ingest(self) -> IngestSummary:
        results = [ItemResult(r.index, "rejected") for r in self.rejected]
        return IngestSummary(self.accepted, self.duplicates, len(self.rejected), results)


# The path each -protocol posts to (native: -endpoint, "events" by default).
# SDK protocols send exactly what the SDK sends (bench/sdk_shapes.py, from the recorded
# requests in tests/fixtures/sdk): "segment" is analytics-python, "posthog" posthog-python.
PROTOCOLS = {"native": "events", "segment": "v1/batch", "posthog": "batch/",
             "analytics-python": "v1/batch", "rudder-sdk-python": "v1/batch",
             "posthog-python": "batch/", "posthog-js": "e/",
             "posthog-js-beacon": "e/?compression=base64"}  # fmt: skip

ENCODER = msgspec.json.Encoder()
SUMMARY_DECODER = msgspec.json.Decoder(IngestSummary)
SDK_SUMMARY_DECODER = msgspec.json.Decoder(SdkSummary)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    url: str
    endpoint: str
    total: int
    rate: float
    concurrency: int
    batch: int
    duplicates: float
    workers: int
    users: int
    timeout: float
    wait: bool
    no_verify: bool
    verify_timeout: float
    json: bool
    quiet: bool
    seed: int | None
    key: str | None
    read_key: str | None
    protocol: str = "native"


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "t", "true", "yes", "on"}:
        return True
    if value in {"0", "f", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    # Go's flag package accepts both -name and --name, so declare both spellings.
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kwargs)


def _bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    # Go bools: bare `-name` means true, `-name=false` sets it explicitly.
    _flag(
        parser,
        name,
        type=_parse_bool,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=help,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench.load", description="Load generator for event-metrics.", allow_abbrev=False
    )
    _flag(p, "url", default="http://127.0.0.1:8080", help="service base URL")
    _flag(
        p,
        "endpoint",
        default="events",
        help="path segment; 'events' = POST /events, anything else is a GET",
    )
    _flag(p, "total", type=int, default=20000, help="events to send")
    _flag(p, "rate", type=float, default=2000, help="target events/s, 0 = as fast as possible")
    _flag(p, "concurrency", type=int, default=64, help="in-flight requests per worker process")
    _flag(p, "batch", type=int, default=1, help="events per request")
    _flag(
        p,
        "duplicates",
        type=float,
        default=0.0,
        help="fraction 0..1 of events that reuse an earlier idempotency key",
    )
    _flag(p, "workers", type=int, default=1, help="OS processes sharing the rate and total")
    _flag(p, "users", type=int, default=1000, help="size of the user_id pool")
    _flag(p, "timeout", type=float, default=30.0, help="per-request timeout, seconds")
    _bool_flag(p, "wait", True, "wait for the database commit (false sends ?wait=false)")
    _bool_flag(p, "no-verify", False, "skip the final /metrics check")
    _flag(p, "verify-timeout", type=float, default=30.0, help="seconds to poll /metrics")
    _bool_flag(p, "json", False, "print a JSON summary on stdout instead of the table")
    _bool_flag(p, "quiet", False, "no progress bar on stderr")
    _flag(p, "seed", type=int, default=None, help="RNG seed for users and duplicate picks")
    _flag(p, "key", default=None, help="a project's write key (sent as Bearer)")
    _flag(p, "read-key", default=None, help="the project's read key, for the /metrics check")
    _flag(
        p,
        "protocol",
        default="native",
        choices=sorted(PROTOCOLS),
        help="wire format of the events: native POST /events, or batches exactly as an SDK "
        "sends them (recorded in tests/fixtures/sdk): analytics-python (alias segment), "
        "rudder-sdk-python, posthog-python (alias posthog), posthog-js (gzip) and "
        "posthog-js-beacon (its page-unload form of base64)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> Config:
    parser = build_parser()
    ns = parser.parse_args(argv)
    problems = _validate(ns)
    if problems:
        parser.error("; ".join(problems))
    # Normalise so that "-url http://h:1/" and "-endpoint /events" behave like the Go tool.
    ns.url, ns.endpoint = ns.url.rstrip("/"), ns.endpoint.strip("/")
    if ns.protocol != "native":
        ns.endpoint = "events"  # an SDK protocol always sends events, to its own path
    return Config(**vars(ns))


def _validate(ns: argparse.Namespace) -> list[str]:
    checks = [
        (ns.total >= 1, "-total must be >= 1"),
        (ns.rate >= 0, "-rate must be >= 0"),
        (ns.concurrency >= 1, "-concurrency must be >= 1"),
        (ns.batch >= 1, "-batch must be >= 1"),
        (0.0 <= ns.duplicates <= 1.0, "-duplicates must be within 0..1"),
        (ns.workers >= 1, "-workers must be >= 1"),
        (ns.users >= 1, "-users must be >= 1"),
        (ns.timeout > 0, "-timeout must be > 0"),
        (ns.verify_timeout >= 0, "-verify-timeout must be >= 0"),
        (ns.protocol == "native" or ns.key, "-protocol segment|posthog needs -key"),
    ]
    return [message for ok, message in checks if not ok]


# --------------------------------------------------------------------------- worker plan


@dataclass(frozen=True)
class WorkerPlan:
    """One process's share: a disjoint range of seq numbers and its slice of the rate."""

    cfg: Config
    index: int
    first_seq: int
    n_events: int
    rate: float  # events/s for this worker, 0 = unpaced
    run_id: str
    seed: int

    @property
    def event_name(self) -> str:
        return f"load_{self.run_id}"

    @property
    def is_events(self) -> bool:
        return self.cfg.endpoint == "events"


def request_url(cfg: Config) -> str:
    url = f"{cfg.url}/{PROTOCOLS[cfg.protocol] if cfg.protocol != 'native' else cfg.endpoint}"
    if cfg.protocol == "native" and cfg.endpoint == "events" and not cfg.wait:
        url += "?wait=false"
    return url


def plan_workers(cfg: Config, run_id: str, seed: int) -> list[WorkerPlan]:
    n_requests = math.ceil(cfg.total / cfg.batch)
    n_workers = min(cfg.workers, n_requests)  # an idle process would only skew the timing
    base, extra = divmod(cfg.total, n_workers)
    plans: list[WorkerPlan] = []
    first = 0
    for i in range(n_workers):
        n = base + (1 if i < extra else 0)
        plans.append(WorkerPlan(cfg, i, first, n, cfg.rate * n / cfg.total, run_id, seed + i))
        first += n
    return plans


@dataclass
class Workload:
    """Per-event choices, fixed before the clock starts so the send loop only looks them up."""

    key_pos: npt.NDArray[np.int64]  # local position whose seq names this event's key
    users: list[int]
    duplicates_sent: int


def build_workload(plan: WorkerPlan) -> Workload:
    rng = np.random.default_rng(plan.seed)
    n = plan.n_events
    is_dup = np.zeros(n, dtype=bool)
    n_dup = min(n - 1, round(plan.cfg.duplicates * n))
    if n_dup > 0:
        # Position 0 can never be a duplicate: there is no earlier key to reuse.
        is_dup[1 + rng.choice(n - 1, size=n_dup, replace=False)] = True
    fresh = ~is_dup
    fresh_pos = np.flatnonzero(fresh)
    fresh_before = np.cumsum(fresh) - fresh  # fresh keys strictly before each position
    key_pos = np.arange(n, dtype=np.int64)
    dup_pos = np.flatnonzero(is_dup)
    key_pos[dup_pos] = fresh_pos[rng.integers(0, fresh_before[dup_pos])]
    # A duplicate is a retry of its original, so it carries the original's user.
    users = rng.integers(0, plan.cfg.users, size=n)[key_pos]
    return Workload(key_pos=key_pos, users=users.tolist(), duplicates_sent=int(n_dup))


# --------------------------------------------------------------------------- worker process


@dataclass
class WorkerResult:
    index: int
    latencies_ms: npt.NDArray[np.float64]
    t_start: float  # time.monotonic(): system-wide on Linux, so comparable across processes
    t_end: float
    requests: int = 0
    events: int = 0
    ok_events: int = 0
    status_counts: Counter[int] = field(default_factory=Counter)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    http_errors: int = 0
    connection_errors: Counter[str] = field(default_factory=Counter)
    duplicates_sent: int = 0
    acked_keys: int = 0
    unacked_keys: int = 0


class Driver:
    """Sends one worker's share from `concurrency` sender coroutines on one keep-alive pool."""

    def __init__(self, plan: WorkerPlan, work: Workload, progress: ProgressArray) -> None:
        self.plan = plan
        self.work = work
        self.progress = progress
        self.n_requests = math.ceil(plan.n_events / plan.cfg.batch)
        self.interval = plan.cfg.batch / plan.rate if plan.rate > 0 else 0.0
        self.url = request_url(plan.cfg)
        self.key_list: list[int] = work.key_pos.tolist()  # plain ints: cheaper per event
        self.user_ids = [f"user-{u}" for u in range(plan.cfg.users)]
        self.post_headers = dict(JSON_HEADERS)
        if plan.cfg.key and plan.cfg.protocol == "native":  # SDKs: sdk_shapes' own headers
            self.post_headers["Authorization"] = f"Bearer {plan.cfg.key}"
        self.next_req = 0
        self.t0 = 0.0
        self.sent = np.zeros(plan.n_events, dtype=bool)
        self.acked = np.zeros(plan.n_events, dtype=bool)
        self.latencies = np.empty(self.n_requests, dtype=np.float64)
        self.n_lat = 0
        self.result = WorkerResult(plan.index, self.latencies, 0.0, 0.0)
        self.session: aiohttp.ClientSession | None = None

    async def run(self) -> WorkerResult:
        connector = aiohttp.TCPConnector(limit=self.plan.cfg.concurrency, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.plan.cfg.timeout)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        ) as session:
            self.session = session
            self.t0 = self.result.t_start = time.monotonic()
            senders = min(self.plan.cfg.concurrency, self.n_requests)
            await asyncio.gather(*(self._sender() for _ in range(senders)))
            self.result.t_end = time.monotonic()
        return self._finish()

    def _finish(self) -> WorkerResult:
        r = self.result
        r.latencies_ms = self.latencies[: self.n_lat].copy()
        r.duplicates_sent = self.work.duplicates_sent
        r.acked_keys = int(self.acked.sum())
        r.unacked_keys = int((self.sent & ~self.acked).sum())
        return r

    def _bounds(self, k: int) -> tuple[int, int]:
        lo = k * self.plan.cfg.batch
        return lo, min(lo + self.plan.cfg.batch, self.plan.n_events)

    async def _sender(self) -> None:
        # Senders claim request numbers in order; the loop is single-threaded so no lock.
        while self.next_req < self.n_requests:
            k = self.next_req
            self.next_req += 1
            await self._wait_turn(k)
            await self._send(k)

    async def _wait_turn(self, k: int) -> None:
        # Token schedule: request k is due at t0 + k*interval. When behind, the tokens have
        # already accrued and we send at once instead of sleeping per request.
        if self.interval:
            delay = self.t0 + k * self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def _body(self, lo: int, hi: int) -> bytes | None:
        if not self.plan.is_events:
            return None
        now = datetime.now(UTC)  # encoded after the wait so the timestamp is the send time
        if self.plan.cfg.protocol != "native":
            # Exactly as the SDK sends it: its recorded envelope, headers and messages.
            request = sdk_shapes.sdk_batch(
                self.plan.cfg.protocol, key=self.plan.cfg.key or "", run=self.plan.run_id,
                seqs=[self.plan.first_seq + self.key_list[pos] for pos in range(lo, hi)],
                event_name=self.plan.event_name,
                users=[self.user_ids[self.work.users[pos]] for pos in range(lo, hi)],
            )  # fmt: skip
            self.post_headers = request.headers
            return request.body
        events = [self._event(pos, now) for pos in range(lo, hi)]
        return ENCODER.encode(events[0] if self.plan.cfg.batch == 1 else events)

    def _event(self, pos: int, now: datetime) -> Event:
        seq = self.plan.first_seq + self.key_list[pos]
        return Event(
            event_name=self.plan.event_name,
            user_id=self.user_ids[self.work.users[pos]],
            timestamp=now,
            idempotency_key=f"{self.plan.run_id}-{seq}",
            channel=CHANNELS[seq % len(CHANNELS)],
            properties={"seq": seq},
        )

    async def _send(self, k: int) -> None:
        assert self.session is not None
        lo, hi = self._bounds(k)
        body = self._body(lo, hi)
        method, headers = ("POST", self.post_headers) if body is not None else ("GET", None)
        self.sent[self.work.key_pos[lo:hi]] = True
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.url, data=body, headers=headers) as resp:
                payload = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.result.connection_errors[type(exc).__name__] += 1
        else:
            self.latencies[self.n_lat] = (time.perf_counter() - started) * 1000.0
            self.n_lat += 1
            self._record(lo, hi, resp.status, payload)
        finally:
            self.result.requests += 1
            self.result.events += hi - lo
            self.progress[self.plan.index] += hi - lo  # only this process writes this slot

    def _record(self, lo: int, hi: int, status: int, payload: bytes) -> None:
        r = self.result
        r.status_counts[status] += 1
        if not 200 <= status < 300:
            r.http_errors += 1
        else:
            r.ok_events += hi - lo
        summary = _decode_summary(payload) if self.plan.is_events else None
        if summary is not None:
            r.accepted += summary.accepted
            r.duplicates += summary.duplicates
            r.rejected += summary.rejected
        if self.plan.is_events and status in ACK_HTTP:
            self._ack(lo, hi, summary)

    def _ack(self, lo: int, hi: int, summary: IngestSummary | None) -> None:
        # A 200/202 acknowledges every event it does not explicitly reject. `results` may be
        # truncated for large batches, so absence from it is not a rejection.
        acked = np.ones(hi - lo, dtype=bool)
        for item in summary.results if summary is not None else ():
            if item.status == "rejected" and 0 <= item.index < hi - lo:
                acked[item.index] = False
        self.acked[self.work.key_pos[lo:hi][acked]] = True


def _decode_summary(payload: bytes) -> IngestSummary | None:
    try:
        return SUMMARY_DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        return SDK_SUMMARY_DECODER.decode(payload).as_ingest()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # e.g. a plain-text 503 from a proxy


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def worker_main(
    plan: WorkerPlan, barrier: Barrier, progress: ProgressArray, results: ResultQueue
) -> None:
    """Process entry point: build the workload, wait for the others, then send."""
    try:
        work = build_workload(plan)
        barrier.wait(START_TIMEOUT_S)
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            result = runner.run(Driver(plan, work, progress).run())
        results.put((plan.index, result))
    except Exception:
        barrier.abort()  # release the parent at once instead of after the start timeout
        results.put((plan.index, traceback.format_exc()))


# --------------------------------------------------------------------------- parent process


class ProgressBar:
    """A one-line \\r progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, total: int, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.started = time.monotonic()
        self.last_draw = 0.0
        self.last_done = -1

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last_draw < PROGRESS_INTERVAL_S):
            return
        if force and done == self.last_done:
            return  # the final line is already on screen
        self.last_draw, self.last_done = now, done
        elapsed = now - self.started
        frac = done / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        rate = done / elapsed if elapsed > 0 else 0.0
        self.stream.write(
            f"\r[{bar:<30}] {done}/{self.total} {frac:6.1%} {rate:9.0f} ev/s {elapsed:6.1f}s"
        )
        self.stream.flush()

    def finish(self, done: int) -> None:
        self.update(done, force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class WorkerFailed(RuntimeError):
    pass


def run_workers(cfg: Config, plans: list[WorkerPlan]) -> tuple[list[WorkerResult], float, float]:
    """Run every plan in its own process; return results and the wall-clock run window."""
    ctx = mp.get_context("spawn")  # no inherited loop or connection state in the children
    barrier = ctx.Barrier(len(plans) + 1)
    progress = ctx.RawArray(ctypes.c_int64, len(plans))
    results: ResultQueue = ctx.Queue()
    procs = [
        ctx.Process(target=worker_main, args=(p, barrier, progress, results), daemon=True)
        for p in plans
    ]
    for proc in procs:
        proc.start()
    try:
        _await_start(barrier, results)
        wall_start = time.time()
        collected = _collect(procs, results, progress, cfg.total, not cfg.quiet)
        wall_end = time.time()
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    return collected, wall_start, wall_end


def _await_start(barrier: Barrier, results: ResultQueue) -> None:
    try:
        barrier.wait(START_TIMEOUT_S)
    except BrokenBarrierError:
        try:
            _, detail = results.get(timeout=5)
        except queue.Empty:
            detail = "workers did not start in time"
        raise WorkerFailed(str(detail)) from None


def _collect(
    procs: list[SpawnProcess],
    results: ResultQueue,
    progress: ProgressArray,
    total: int,
    show_progress: bool,
) -> list[WorkerResult]:
    bar = ProgressBar(total, show_progress)
    got: dict[int, WorkerResult] = {}
    while len(got) < len(procs):
        try:
            index, outcome = results.get(timeout=PROGRESS_INTERVAL_S)
        except queue.Empty:
            _check_alive(procs, got)
        else:
            if isinstance(outcome, str):
                bar.finish(sum(progress))
                raise WorkerFailed(outcome)
            got[index] = outcome
        bar.update(sum(progress))
    bar.finish(sum(progress))
    return [got[i] for i in sorted(got)]


def _check_alive(procs: list[SpawnProcess], got: dict[int, WorkerResult]) -> None:
    for i, proc in enumerate(procs):
        # exit code 0 without a result cannot happen: the queue is flushed before exit.
        if i not in got and proc.exitcode not in (None, 0):
            raise WorkerFailed(f"worker {i} died with exit code {proc.exitcode}")


# --------------------------------------------------------------------------- verification


@dataclass
class Verification:
    verified: bool | None  # None = not checked
    expected: int
    counted: int | None = None
    detail: str = ""
    backend: str | None = None


@dataclass
class MetricsReading:
    events: int | None = None
    backend: str | None = None
    error: str | None = None


def rfc3339(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def metrics_url(cfg: Config, event_name: str, wall_start: float, wall_end: float) -> str:
    # /metrics needs whole seconds and is half-open; the margin absorbs client/server skew.
    params = {
        "from": rfc3339(math.floor(wall_start) - WINDOW_MARGIN_S),
        "to": rfc3339(math.ceil(wall_end) + WINDOW_MARGIN_S),
        "event_name": event_name,
    }
    return f"{cfg.url}/metrics?{urllib.parse.urlencode(params)}"


def read_metrics(url: str, read_key: str | None = None) -> MetricsReading:
    request = urllib.request.Request(url)
    if read_key:
        request.add_header("Authorization", f"Bearer {read_key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            doc = json.load(resp)
    except urllib.error.HTTPError as exc:
        return MetricsReading(error=f"HTTP {exc.code}: {exc.read()[:200]!r}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return MetricsReading(error=f"{type(exc).__name__}: {exc}")
    total = doc.get("total") if isinstance(doc, dict) else None
    if not isinstance(total, dict):
        return MetricsReading(error=f"unexpected /metrics body: {str(doc)[:200]}")
    events = total.get("events")
    return MetricsReading(
        events=events if isinstance(events, int) else None, backend=doc.get("backend")
    )


def verify(url: str, expected: int, timeout_s: float, read_key: str | None) -> Verification:
    """Poll /metrics until it counts exactly `expected` events (a replica may lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reading = read_metrics(url, read_key)
        if reading.error is None and reading.events is None:
            return Verification(
                None,
                expected,
                detail="server does not count events",
                backend=reading.backend,
            )
        if reading.events == expected:
            return Verification(True, expected, reading.events, "ok", reading.backend)
        if time.monotonic() >= deadline:
            detail = reading.error or f"counted {reading.events}, expected {expected}"
            return Verification(False, expected, reading.events, detail, reading.backend)
        time.sleep(VERIFY_POLL_S)


# --------------------------------------------------------------------------- report


def _percentiles(lat: npt.NDArray[np.float64]) -> dict[str, float | None]:
    if lat.size == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "max": round(float(lat.max()), 3),
    }


def summarize(
    cfg: Config, event_name: str, results: list[WorkerResult], check: Verification
) -> dict[str, Any]:
    duration = max(r.t_end for r in results) - min(r.t_start for r in results)
    per_s = 1.0 / duration if duration > 0 else 0.0
    events, requests = sum(r.events for r in results), sum(r.requests for r in results)
    statuses: Counter[int] = sum((r.status_counts for r in results), Counter())
    conn: Counter[str] = sum((r.connection_errors for r in results), Counter())
    return {
        "total_events": events,
        "requests": requests,
        "duration_s": round(duration, 4),
        "events_per_s": round(events * per_s, 1),
        "requests_per_s": round(requests * per_s, 1),
        "ok_events_per_s": round(sum(r.ok_events for r in results) * per_s, 1),
        "latency_ms": _percentiles(np.concatenate([r.latencies_ms for r in results])),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "accepted": sum(r.accepted for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "rejected": sum(r.rejected for r in results),
        "errors": sum(r.http_errors for r in results),
        "connection_errors": sum(conn.values()),
        "connection_error_kinds": dict(conn),
        "duplicates_sent": sum(r.duplicates_sent for r in results),
        "unacknowledged_keys": sum(r.unacked_keys for r in results),
        "verified": check.verified,
        "verify_detail": check.detail,
        "expected_unique": check.expected,
        "counted": check.counted,
        "backend": check.backend,
        "event_name": event_name,
        "config": {
            "rate": cfg.rate,
            "batch": cfg.batch,
            "concurrency": cfg.concurrency,
            "workers": len(results),
            "wait": cfg.wait,
            "endpoint": cfg.endpoint,
            "protocol": cfg.protocol,
        },
    }


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _route(c: dict[str, Any]) -> str:
    path = PROTOCOLS.get(c["protocol"]) if c["protocol"] != "native" else c["endpoint"]
    return f"endpoint=/{path} protocol={c['protocol']}"


def render_table(s: dict[str, Any]) -> str:
    c, lat = s["config"], s["latency_ms"]
    rate = f"{c['rate']:g}/s" if c["rate"] else "unpaced"
    verdict = {True: "OK", False: "FAILED", None: "not checked"}[s["verified"]]
    conn_kinds = s["connection_error_kinds"] or ""
    rows = [
        ("run", f"{s['event_name']} {_route(c)} wait={str(c['wait']).lower()}"),
        ("load", f"rate {rate}, batch {c['batch']}, concurrency {c['concurrency']}"),
        ("workers", f"{c['workers']} process(es)"),
        ("sent", f"{s['total_events']} events, {s['requests']} requests"),
        ("duration", f"{s['duration_s']:.2f} s"),
        ("events/s", f"{s['events_per_s']:.1f} (2xx only: {s['ok_events_per_s']:.1f})"),
        ("requests/s", f"{s['requests_per_s']:.1f}"),
        ("latency ms", "  ".join(f"{k} {_fmt_ms(lat[k])}" for k in ("p50", "p90", "p99", "max"))),
        ("http status", " ".join(f"{k}={v}" for k, v in s["status_counts"].items()) or "-"),
        ("accepted", s["accepted"]),
        ("duplicates", f"{s['duplicates']} (sent {s['duplicates_sent']})"),
        ("rejected", s["rejected"]),
        ("errors", f"{s['errors']} non-2xx, {s['connection_errors']} connection {conn_kinds}"),
        ("verify", f"{verdict} ({s['verify_detail']})"),
        ("expected", f"{s['expected_unique']} unique acknowledged keys"),
        ("counted", f"{s['counted']} by /metrics (backend {s['backend']})"),
    ]
    return "\n".join(f"{name:<12} {value}".rstrip() for name, value in rows)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    run_id = secrets.token_hex(6)
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(32)
    event_name = f"load_{run_id}"
    plans = plan_workers(cfg, run_id, seed)
    try:
        results, wall_start, wall_end = run_workers(cfg, plans)
    except WorkerFailed as exc:
        print(f"bench.load: worker failed:\n{exc}", file=sys.stderr)
        return 2
    expected = sum(r.acked_keys for r in results)
    check = Verification(None, expected, detail="-no-verify")
    if cfg.endpoint != "events":
        check.detail = "endpoint is not events"
    elif not cfg.no_verify:
        url = metrics_url(cfg, event_name, wall_start, wall_end)
        check = verify(url, expected, cfg.verify_timeout, cfg.read_key)
    summary = summarize(cfg, event_name, results, check)
    print(json.dumps(summary) if cfg.json else render_table(summary))
    return 1 if check.verified is False else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

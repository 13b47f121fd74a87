"""The dispatcher: claims due deliveries from the outbox, sends them, records what happened.

At-least-once: a delivery leaves the outbox only when its outcome is recorded. A process killed
mid-send leaves a lease that expires, and another (or the restarted) process takes it again.

Through a store outage the dispatcher keeps running: it stops claiming, finishes what it holds, and
keeps every outcome it could not record (those pushes were sent) until the store takes them, so a
failed record never makes a push go out twice. No new claim is made while outcomes wait.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple, Protocol

import anyio

from gateway.backoff import backoff_delays
from gateway.config import PushSettings
from gateway.endpoints import InvalidEndpoint, canonical_endpoint, origin_of, push_host, redact
from gateway.exceptions import StoreError, StoreRefused, StoreUnavailable
from gateway.links import NEARBLOCKS
from gateway.metrics import Metrics
from gateway.models import Claim
from gateway.pacing.collapse import topic_for
from gateway.pacing.digest import digest_tag
from gateway.pacing.urgency import ttl_for, urgency_for
from gateway.payload import COMPACT_PLAINTEXT_BYTES, MAX_PLAINTEXT_BYTES, build_payload, with_badge
from gateway.store.base import Outcome, Store
from gateway.webpush import PushAnswer, SealedPush, Verdict

log = logging.getLogger(__name__)

FLUSH_WINDOW = 0.005  # seconds outcomes gather before one transaction records them all
CLAIM_BATCH = 256  # most deliveries taken in one claim
PAYLOAD_CACHE = 4096  # payloads kept for the other streams of the same event
CLAIM_BATCH_MIN = 16  # with a backlog, wait for this many free slots before claiming...
CLAIM_GATHER = 0.005  # ...but no longer than this (seconds)
STORE_RETRY_INITIAL = 0.1  # seconds before asking an unavailable store again...
STORE_RETRY_MAX = 2.0  # ...doubling up to this for claims,
RECORD_RETRY_MAX = 0.5  # and to this for outcomes: recorded before their leases end and others claim them
SHUTDOWN_FLUSH = 5.0  # seconds a stopping dispatcher gives the store to take its last outcomes
# Claimed pushes are sealed (payload, encryption, headers) this many back to back before the sending
# tasks post them: 3% less CPU per push than sealing each in its task (bench/README.md).
SEAL_CHUNK = 32


class Sender(Protocol):
    def seal(
        self,
        endpoint: str,
        p256dh: str,
        auth: str,
        plaintext: bytes,
        urgency: str | None = None,
        ttl: int | None = None,
        topic: str | None = None,
    ) -> SealedPush: ...

    async def post(self, push: SealedPush) -> PushAnswer: ...


class _Ready(NamedTuple):
    """A claimed delivery made ready to send: sealed, or already answered (never sendable)."""

    claim: Claim
    host: str  # the metrics label
    push: SealedPush | PushAnswer


def retry_delay(attempt: int, retry_after: float | None, settings: PushSettings, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (1-based); Retry-After wins when it asks for longer."""
    delays = backoff_delays(settings.retry_initial_delay, settings.retry_max_delay, rng)
    for _ in range(attempt - 1):
        next(delays)
    delay = next(delays)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_delay))
    return delay


def decide(claim: Claim, answer: PushAnswer, settings: PushSettings, now: float, rng: random.Random) -> Outcome:
    """Turn a push service's answer into the delivery's next state. Pure."""
    d = claim.delivery_id
    if answer.verdict is Verdict.SENT:
        return Outcome(d, "sent", answer.status)
    if answer.verdict is Verdict.GONE:
        return Outcome(d, "gone", answer.status, answer.detail, endpoint_hash=claim.stream.endpoint_hash)
    if answer.verdict is Verdict.REJECTED:
        return Outcome(d, "rejected", answer.status, f"VAPID rejected: {answer.detail}")
    if answer.verdict is Verdict.TOO_LARGE:
        if claim.compact:
            return Outcome(d, "dead", answer.status, f"payload too large even when compact: {answer.detail}")
        return Outcome(d, "retry", answer.status, answer.detail, retry_at=now, compact=True)
    if answer.verdict is Verdict.RETRY:
        retry_at = now + retry_delay(claim.attempts, answer.retry_after, settings, rng)
        if retry_at - claim.event_created_at > settings.give_up_after:
            return Outcome(d, "dead", answer.status, f"gave up after {claim.attempts} attempts: {answer.detail}")
        return Outcome(d, "retry", answer.status, answer.detail, retry_at=retry_at, compact=claim.compact)
    return Outcome(d, "dead", answer.status, answer.detail)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        settings: PushSettings,
        *,
        links: Mapping[str, Mapping[str, str]] | None = None,
        explorer: tuple[str, str] = NEARBLOCKS,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._links = links or {}
        self._explorer = explorer
        self._metrics = metrics
        self._store = store
        self._sender = sender
        self._settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = anyio.Event()
        # Free sending slots. Plain asyncio in the per-push path: anyio's stream and semaphore
        # checkpoints cost more than 150 µs per push here (bench/README.md).
        self._free = settings.concurrency
        self._slot_freed = asyncio.Event()
        self._in_flight: set[int] = set()
        self._rejected_origins: set[str] = set()
        self._outcomes: list[Outcome] = []
        self._payloads: dict[tuple[str, str, bool], bytes] = {}  # one build per (event, gateway, form)
        self._outcomes_waiting = asyncio.Event()
        self._unrecorded = False  # outcomes wait for the store: claim nothing until they are recorded

    def wake(self) -> None:
        """Tell the dispatcher new deliveries are waiting (called after ingest)."""
        self._wake.set()

    async def run(self) -> None:
        queue: asyncio.Queue[_Ready] = asyncio.Queue()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write_outcomes)
                for _ in range(self._settings.concurrency):  # a fixed pool: no task per push
                    tg.start_soon(self._work, queue)
                backlog = False
                pauses = self._store_pauses()
                while True:
                    await self._room()  # a push finishing frees a slot at once
                    if backlog and self._free < CLAIM_BATCH_MIN:
                        await anyio.sleep(CLAIM_GATHER)  # a backlog: let more slots free up, claim them together
                    if self._unrecorded:  # outcomes wait for the store: claim nothing before they are in
                        await anyio.sleep(next(pauses))
                        continue
                    want = min(self._free, CLAIM_BATCH)
                    try:
                        claims = await self._store.claim(want, self._settings.claim_lease)
                    except StoreUnavailable:  # logged once by the store boundary
                        await anyio.sleep(next(pauses))
                        continue
                    except Exception:  # a bug must not stop sending: back off, keep running
                        log.exception("claiming deliveries failed")
                        await anyio.sleep(next(pauses))
                        continue
                    pauses = self._store_pauses()
                    backlog = len(claims) == want
                    self._free -= len(claims)
                    self._in_flight.update(claim.delivery_id for claim in claims)
                    for i, claim in enumerate(claims, 1):
                        queue.put_nowait(self._ready(claim))
                        if i % SEAL_CHUNK == 0 and i < len(claims):
                            await asyncio.sleep(0)  # the first ones go out while the rest are sealed
                    if not claims:
                        await self._idle()
        finally:
            with anyio.CancelScope(shield=True) as last_words:
                last_words.deadline = anyio.current_time() + SHUTDOWN_FLUSH  # an outage must not hold the exit
                try:
                    if await self._flush_outcomes():
                        await self._release_in_flight()
                except StoreError as exc:  # not released: their leases end and others take them
                    log.warning("could not give back %d claims: %s", len(self._in_flight), exc)
            if self._outcomes:
                log.warning(
                    "stopping with %d outcomes the store did not take: those deliveries are sent again "
                    "once their lease ends",
                    len(self._outcomes),
                )

    def _store_pauses(self, maximum: float = STORE_RETRY_MAX) -> Iterator[float]:
        return backoff_delays(STORE_RETRY_INITIAL, maximum, self._rng)

    async def _room(self) -> None:
        while self._free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _work(self, queue: asyncio.Queue[_Ready]) -> None:
        while True:
            await self._deliver(await queue.get())

    async def _idle(self) -> None:
        """Sleep until woken, until the next delivery is due, or one poll interval."""
        timeout = self._settings.poll_interval
        try:
            due = await self._store.next_due_at()
        except StoreUnavailable:  # the next claim finds out how long the outage lasts
            due = None
        if due is not None:
            timeout = min(timeout, max(0.0, due - self._clock()))
        if timeout > 0:
            with anyio.move_on_after(timeout):
                await self._wake.wait()
        self._wake = anyio.Event()

    def _ready(self, claim: Claim) -> _Ready:
        """Seal a claimed delivery: its canonical endpoint, payload, encryption and headers."""
        stream = claim.stream
        try:
            # Rows stored before endpoints were canonical are read in the canonical form too: one
            # pool, one VAPID aud and one metrics label per push service, whatever the spelling.
            endpoint = canonical_endpoint(stream.endpoint)
            host = push_host(endpoint)
        except InvalidEndpoint as exc:  # never sent: dead-lettered with the reason
            return _Ready(claim, "invalid", PushAnswer(Verdict.FAILED, None, None, f"invalid endpoint: {exc}"))
        if endpoint != stream.endpoint:
            stream = stream._replace(endpoint=endpoint)
            claim = claim._replace(stream=stream)
        types = self._settings.types
        try:
            sealed = self._sender.seal(
                endpoint,
                stream.p256dh,
                stream.auth,
                self._payload(claim),
                urgency_for(claim.row, types),
                ttl_for(claim.row, types),
                # the tag of the notification it shows: replaced at the push service and on screen alike
                digest_tag(list(claim.folded), types) if claim.folded else topic_for(claim.row, types),
            )
        except Exception as exc:  # a bug of ours must not lose the delivery: retry it later
            log.exception("preparing delivery=%s failed unexpectedly", claim.delivery_id)
            return _Ready(claim, host, PushAnswer(Verdict.RETRY, None, None, f"internal error: {type(exc).__name__}"))
        return _Ready(claim, host, sealed)

    async def _deliver(self, ready: _Ready) -> None:
        claim, host, push = ready
        try:
            started = time.perf_counter()
            try:
                answer = push if isinstance(push, PushAnswer) else await self._sender.post(push)
            except Exception as exc:  # a bug of ours must not lose the delivery: retry it later
                log.exception("sending delivery=%s failed unexpectedly", claim.delivery_id)
                answer = PushAnswer(Verdict.RETRY, None, None, f"internal error: {type(exc).__name__}")
            now = self._clock()
            outcome = decide(claim, answer, self._settings, now, self._rng)
            self._log(claim, answer, outcome)
            if self._metrics is not None:
                self._metrics.pushed(
                    outcome.status,
                    host,
                    time.perf_counter() - started,
                    None if claim.folded else now - claim.event_created_at,
                )
            self._outcomes.append(outcome)
            self._outcomes_waiting.set()
        finally:
            self._free += 1
            self._slot_freed.set()

    def _payload(self, claim: Claim) -> bytes:
        def build() -> bytes:
            return build_payload(
                claim.row,
                gateway=claim.stream.gateway,
                links=self._links,
                compact=claim.compact,
                explorer=self._explorer,
                types=self._settings.types,
                folded=claim.folded,
                folded_total=claim.folded_total,
                inbox_id=claim.inbox_id,
            )

        limit = COMPACT_PLAINTEXT_BYTES if claim.compact else MAX_PLAINTEXT_BYTES
        if claim.folded:  # a digest is its stream's own
            return with_badge(build(), claim.unread, limit)
        key = (claim.event_key, claim.stream.gateway, claim.compact)
        cached = self._payloads.get(key) if claim.event_key else None
        if cached is None:
            cached = build()
            if len(self._payloads) >= PAYLOAD_CACHE:
                self._payloads.clear()
            self._payloads[key] = cached
        return with_badge(cached, claim.unread, limit)

    async def _write_outcomes(self) -> None:
        """Record outcomes in batches: one transaction per FLUSH_WINDOW instead of one per push;
        while the store is unavailable, the same outcomes again after a growing pause."""
        pauses = self._store_pauses(RECORD_RETRY_MAX)
        while True:
            await self._outcomes_waiting.wait()
            await anyio.sleep(FLUSH_WINDOW)
            self._outcomes_waiting = asyncio.Event()
            with anyio.CancelScope(shield=True):
                recorded = await self._flush_outcomes()
            if recorded:
                pauses = self._store_pauses(RECORD_RETRY_MAX)
            else:
                await anyio.sleep(next(pauses))
                self._outcomes_waiting.set()

    async def _flush_outcomes(self) -> bool:
        """Record what is waiting; False (the outcomes kept, in order) when the store is unavailable."""
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return True
        try:
            await self._store.record(batch)
        except StoreUnavailable:
            return self._keep(batch)
        except anyio.get_cancelled_exc_class():  # stopping mid-record: kept for the last flush
            self._outcomes = batch + self._outcomes
            raise
        except StoreRefused:  # one outcome the store cannot take must not hold back the others
            waiting = await self._record_each(batch)
            if waiting:
                return self._keep(waiting)
        except Exception:  # a bug: their leases expire and the deliveries are taken again
            log.exception("recording %d outcomes failed", len(batch))
        self._unrecorded = False
        for outcome in batch:
            self._in_flight.discard(outcome.delivery_id)
        if any(o.status == "retry" for o in batch):
            self._wake.set()  # the idle timer must account for these retries' due times
        return True

    def _keep(self, outcomes: list[Outcome]) -> bool:
        """Put outcomes the store did not take back in front, in order, for the next try."""
        self._outcomes = outcomes + self._outcomes
        self._unrecorded = True
        return False

    async def _record_each(self, batch: list[Outcome]) -> list[Outcome]:
        """Record outcomes one by one, skipping those the store refuses; those still to record
        when the store became unavailable are returned."""
        for i, outcome in enumerate(batch):
            try:
                await self._store.record([outcome])
            except StoreRefused as exc:  # its lease expires and the delivery is taken again
                log.error("the store refused the outcome of delivery=%s: %s", outcome.delivery_id, exc)
            except StoreUnavailable:
                return batch[i:]
            self._in_flight.discard(outcome.delivery_id)  # done with: never released at shutdown
        return []

    async def _release_in_flight(self) -> None:
        if self._in_flight:  # called shielded, at shutdown
            await self._store.release(sorted(self._in_flight))
            self._in_flight.clear()

    def _log(self, claim: Claim, answer: PushAnswer, outcome: Outcome) -> None:
        if outcome.status == "sent":
            if log.isEnabledFor(logging.DEBUG):
                log.debug("push sent delivery=%s endpoint=%s", claim.delivery_id, redact(claim.stream.endpoint))
            return
        where = redact(claim.stream.endpoint)
        if outcome.status == "rejected":
            origin = origin_of(claim.stream.endpoint)
            if origin not in self._rejected_origins:
                self._rejected_origins.add(origin)
                log.error(
                    "push service %s rejected our VAPID credentials (%s): check [vapid] private_key_file "
                    "and subject; deliveries are marked rejected, streams are kept",
                    origin,
                    answer.status,
                )
        elif outcome.status == "gone":
            log.info("subscription gone, streams deleted endpoint=%s status=%s", where, answer.status)
        elif outcome.status == "dead":
            log.warning(
                "delivery dead-lettered delivery=%s endpoint=%s reason=%s", claim.delivery_id, where, outcome.reason
            )
        else:
            log.info(
                "push retry delivery=%s endpoint=%s attempt=%s reason=%s",
                claim.delivery_id,
                where,
                claim.attempts,
                answer.detail,
            )

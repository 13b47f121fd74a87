"""Follows the NEAR chain block by block through a neardata API (``GET /v0/block/{height}``).

Every height in order: a ``null`` answer is a skipped height; a height past the tip is held open by
the server or answered 404 ``BLOCK_DOES_NOT_EXIST`` (wait, ask again); redirects are followed by
hand (relative ``Location`` of ``last_block/final``, archive hosts for old heights) so an API key
goes only where it belongs; 429 waits ``Retry-After``; 5xx, dropped connections and bodies cut short
are retried, never skipped. While behind, ``concurrency`` blocks are fetched at once and committed
strictly in height order, each with its events and the cursor (its height) in one transaction.

Only accounts that have a stream matter: the decoder gets their set (kept current from what changed,
so its upkeep grows with the changes, not the subscribers), and while there are none no block is
downloaded at all. Having been idle, the watcher starts again at the newest final block.
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from typing import Any
from urllib.parse import urljoin, urlsplit

import anyio

from gateway.backoff import backoff_delays, parse_retry_after
from gateway.config import NeardataWatcherSettings
from gateway.models import loads_json
from gateway.nearrpc import TokenMetadataCache
from watchers.base import EventSink, Watcher, WatcherError
from watchers.chain import Block, decode_block, parse_block, with_token_metadata
from watchers.decode import Decoded, Fault
from watchers.http import Answer, BodyTooLarge, RawHttp

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
HEAD_REFRESH = 5.0  # seconds a known chain head is trusted while catching up
TIP_WAIT = 0.5  # seconds before asking again for a height the chain has not made yet
BAD_ANSWER_ATTEMPTS = 5  # a height whose answer is malformed this often in a row is skipped (and logged)
BLOCK_PATH = re.compile(r"/v0/block(?:_opt)?/(\d+)")
RPC_TIMEOUT = 5.0
ACCOUNTS_RELOAD = 300.0  # seconds between reads of the whole set of subscribed accounts
# Seconds of overlap when asking what changed: transactions commit out of order, and several API
# processes stamp streams with their own clocks.
CHANGE_SLACK = 30.0


class NotYet(Exception):
    """The height is past the chain's tip: ask again shortly."""


class BadAnswer(Exception):
    """A well-transported answer that is not a block of the height asked for (counted, retried)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.detail)
        self.fault = fault


SKIPPED = None  # a height at which no block was produced


class NeardataWatcher(Watcher):
    kind = "neardata"

    def __init__(self, settings: NeardataWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings
        self._accounts: set[str] = set()
        self._accounts_read_at = -math.inf
        self._accounts_loaded_at = -math.inf  # never: the set is not known yet
        self._changes_from = 0.0  # wall time of the last read: changes since then are asked for
        self._idle = False
        self._head: int | None = None
        self._head_at = -math.inf
        self._unreachable: str | None = None  # the outage being ridden out, logged once
        self._tokens = TokenMetadataCache(settings.rpc_url, timeout=RPC_TIMEOUT)
        self._rng = random.Random()
        base = urlsplit(settings.url)
        self._base_scheme, self._base_host = base.scheme, (base.hostname or "").lower()
        self._block_route = "/v0/block_opt/" if settings.finality == "optimistic" else "/v0/block/"

    # --- the session ----------------------------------------------------------------------------

    async def _session(self) -> None:
        s = self.settings
        http = RawHttp(s.request_timeout, s.concurrency + 1)
        try:
            next_height: int | None = None
            while True:
                accounts = await self._subscribed()
                if accounts is None:  # not known yet (the store is unavailable): neither idle nor busy
                    await anyio.sleep(min(1.0, s.accounts_refresh))
                    continue
                if not accounts:
                    self._idle, next_height = True, None
                    self.state.connected = False
                    await anyio.sleep(min(1.0, s.accounts_refresh))
                    continue
                if next_height is None:
                    next_height = await self._start(http)
                next_height = await self._advance(http, next_height)
        finally:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def _subscribed(self) -> set[str] | None:
        """The accounts that have a stream; None until they could be read once (an unreadable
        store is not "nobody is subscribed"). Every ``accounts_refresh`` seconds the accounts whose
        streams changed are added; the whole set is read again every ACCOUNTS_RELOAD seconds (which
        also drops accounts whose streams are gone: until then they only cost a lookup)."""
        now = time.monotonic()
        if now - self._accounts_read_at < self.settings.accounts_refresh:
            return self._known_accounts()
        started = time.time()
        try:
            if now - self._accounts_loaded_at >= ACCOUNTS_RELOAD:  # never loaded counts as long ago
                self._accounts = set(await self.sink.accounts())
                self._accounts_loaded_at = now
            else:
                self._accounts.update(await self.sink.accounts_updated_since(self._changes_from - CHANGE_SLACK))
            self._changes_from = started
        except Exception as exc:  # the store is briefly unavailable: keep the last set
            self.fault(Fault("accounts_unavailable", str(exc)[:120]))
        self._accounts_read_at = now
        return self._known_accounts()

    def _known_accounts(self) -> set[str] | None:
        return None if self._accounts_loaded_at == -math.inf else self._accounts

    async def _start(self, http: RawHttp) -> int:
        """The first height to ask for: after the stored cursor; else the configured start; else the
        newest final block. After an idle spell (no subscribers) the newest final block."""
        stored = None if self._idle else await self.sink.cursor(self.name)
        self._idle = False
        if stored is not None and stored.isdigit():
            self.state.cursor = stored
            return int(stored) + 1
        if self.settings.start_block_height and self.state.cursor is None:
            return self.settings.start_block_height
        return await self._final_head(http, force=True)

    async def _advance(self, http: RawHttp, height: int) -> int:
        """Fetch and commit the next blocks (a window of them while behind); the next height to ask."""
        head = await self._final_head(http)
        window = max(1, min(self.settings.concurrency, head - height + 1))
        results: dict[int, Block | None] = {}
        done = {h: anyio.Event() for h in range(height, height + window)}
        failure: list[Exception] = []

        async def fetch(h: int) -> None:
            try:
                results[h] = await self._block(http, h)
            except NotYet:
                pass
            except Exception as exc:  # ends the session once the blocks before it are committed
                failure.append(exc)
            finally:
                done[h].set()

        at_tip = False
        async with anyio.create_task_group() as tg:
            for h in done:
                tg.start_soon(fetch, h)
            for h in done:
                await done[h].wait()
                if h not in results:  # past the tip (or failed): nothing more from this window
                    at_tip = not failure
                    break
                await self._commit(h, results.pop(h))
                height = h + 1
            tg.cancel_scope.cancel()
        if failure:
            raise failure[0]
        if at_tip:
            await anyio.sleep(TIP_WAIT)
        return height

    async def _commit(self, height: int, block: Block | None) -> None:
        self.state.connected = True
        if block is None:
            self.state.skipped_heights += 1
            log.info("watcher %s: no block at height %d (skipped height)", self.name, height)
            decoded = Decoded("skipped", max_block_height=None)
        else:
            decoded = decode_block(
                block,
                source=self.name,
                accounts=self._accounts,
                social_contract=self.settings.social_contract,
                events=self.settings.events,
            )
            decoded.events = [await self._with_metadata(e) for e in decoded.events]
        await self.accept(decoded, cursor=str(height))
        self.state.count_block(time.monotonic())

    async def _with_metadata(self, event: Any) -> Any:
        if not str(event.value_type).startswith("ft_") or not isinstance(event.row.get("token"), str):
            return event
        meta = await self._tokens.get(event.row["token"])
        return with_token_metadata(event, meta.symbol, meta.decimals)

    # --- one block, one head ------------------------------------------------------------------

    async def _block(self, http: RawHttp, height: int) -> Block | None:
        """The block at ``height`` (None when skipped); retried until it is read, except a block
        over ``max_block_bytes`` or one that comes back malformed BAD_ANSWER_ATTEMPTS times."""
        bad = 0
        delays = self._delays()
        while True:
            try:
                _, answer = await self._get(http, f"{self._block_route}{height}")
                return self._read_block(answer, height)
            except BodyTooLarge as exc:  # the same block would be as big again: skip it, loudly
                fault = Fault("block_too_large", str(exc))
                self.fault(fault)
                self._skip_bad_height(height, fault)
                return SKIPPED
            except BadAnswer as exc:
                self.fault(exc.fault)
                bad += 1
                if bad >= BAD_ANSWER_ATTEMPTS:
                    self._skip_bad_height(height, exc.fault)
                    return SKIPPED
                await anyio.sleep(next(delays))
            except _Retry as exc:
                await anyio.sleep(exc.after if exc.after is not None else next(delays))

    def _skip_bad_height(self, height: int, fault: Fault) -> None:
        self.fault(Fault("height_skipped", f"height {height}: {fault.detail}"))
        log.error(
            "watcher %s: height %d skipped (%s: %s); its notifications are lost unless it is replayed",
            self.name,
            height,
            fault.kind,
            fault.detail,
        )

    def _read_block(self, answer: Answer, height: int) -> Block | None:
        if answer.status == 200:
            block, fault = parse_block(answer.body)
            if fault is not None:
                raise BadAnswer(fault)
            if block is not None and block.height != height:
                raise BadAnswer(Fault("wrong_height", f"asked for {height}, got {block.height}"))
            return block
        kind = _error_type(answer.body)
        if answer.status == 404 and kind == "BLOCK_DOES_NOT_EXIST":
            raise NotYet
        if answer.status == 404:
            raise WatcherError(f"height {height}: HTTP 404 {kind or ''}".strip())
        raise self._status_error(answer)

    async def _final_head(self, http: RawHttp, *, force: bool = False) -> int:
        """The newest final height (``/v0/last_block/final`` redirects to it), refreshed now and then."""
        if not force and self._head is not None and time.monotonic() - self._head_at < HEAD_REFRESH:
            return self._head
        delays = self._delays()
        while True:
            try:
                head = await self._head_once(http)
                break
            except _Retry as exc:
                await anyio.sleep(exc.after if exc.after is not None else next(delays))
        self._head, self._head_at = head, time.monotonic()
        self.state.chain_head = head
        return head

    async def _head_once(self, http: RawHttp) -> int:
        url, answer = await self._get(http, "/v0/last_block/final", stop_at=BLOCK_PATH)
        location = answer.headers.get("location")
        if answer.status in REDIRECTS and location:  # to /v0/block/<height>: the height is all we need
            return int(BLOCK_PATH.search(urlsplit(urljoin(url, location)).path).group(1))  # type: ignore[union-attr]
        if answer.status == 200:  # a server that answers the block itself
            block, _ = parse_block(answer.body)
            if block is not None:
                return block.height
            raise _Retry("the newest final block is not a block", None)
        raise self._status_error(answer)

    # --- HTTP -----------------------------------------------------------------------------------

    async def _get(self, http: RawHttp, path: str, stop_at: re.Pattern[str] | None = None) -> tuple[str, Answer]:
        """GET following redirects by hand (the API key is sent only to our host and its subdomains),
        but not one whose target path matches ``stop_at``; the last URL asked, and its answer."""
        url = self._url(path)
        for _ in range(MAX_REDIRECTS + 1):
            answer = await self._request(http, url)
            location = answer.headers.get("location")
            if answer.status not in REDIRECTS or not location:
                return url, answer
            target = self._redirect_target(url, location)
            if stop_at is not None and stop_at.search(urlsplit(target).path):
                return url, answer
            url = target
        raise _Retry(f"more than {MAX_REDIRECTS} redirects for {path}", None)

    async def _request(self, http: RawHttp, url: str) -> Answer:
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self._may_carry_key(url) else {}
        try:
            answer = await http.get(url, headers, self.settings.max_block_bytes)
        except BodyTooLarge:
            raise
        except WatcherError as exc:
            self._went_unreachable(str(exc))
            raise _Retry(str(exc), None) from exc
        self._reachable_again()
        return answer

    def _url(self, path: str) -> str:
        return self.settings.url.rstrip("/") + path

    def _redirect_target(self, url: str, location: str) -> str:
        target = urljoin(url, location)
        if urlsplit(target).scheme not in ("https", "http"):
            raise WatcherError(f"redirect to a non-HTTP location {location[:80]!r}")
        return target

    def _may_carry_key(self, url: str) -> bool:
        if not self.settings.api_key:
            return False
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        same_scheme = parts.scheme == self._base_scheme or parts.scheme == "https"
        return same_scheme and (host == self._base_host or host.endswith("." + self._base_host))

    def _status_error(self, answer: Answer) -> Exception:
        """429 and 5xx are waited out; any other status ends the session (a configuration problem)."""
        text = " ".join(answer.body[:300].decode("utf-8", "replace").split())[:200]
        if answer.status == 429 or answer.status >= 500:
            retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time())
            if retry_after is not None:  # honoured, up to the backoff cap: a server cannot park us for a day
                retry_after = min(retry_after, self.settings.reconnect_max_delay)
            self.fault(Fault(f"http_{answer.status}", text or f"HTTP {answer.status}"))
            return _Retry(f"HTTP {answer.status}", retry_after)
        return WatcherError(f"HTTP {answer.status}: {text}")

    def _went_unreachable(self, reason: str) -> None:
        self.state.last_error = reason[:500]
        if self._unreachable is None:  # once per outage, not once per try
            self._unreachable = reason
            log.warning("watcher %s: %s unreachable (%s); retrying with backoff", self.name, self.settings.url, reason)

    def _reachable_again(self) -> None:
        if self._unreachable is not None:
            log.info("watcher %s: %s reachable again", self.name, self.settings.url)
            self._unreachable = None

    def _delays(self) -> Any:
        s = self.settings
        return backoff_delays(s.reconnect_initial_delay, s.reconnect_max_delay, self._rng)


class _Retry(Exception):
    """A transient failure: try again after ``after`` seconds (None: the next backoff delay)."""

    def __init__(self, reason: str, after: float | None) -> None:
        super().__init__(reason)
        self.after = after


def _error_type(body: bytes) -> str | None:
    """The ``type`` of a neardata error answer (``{"error": ..., "type": "BLOCK_DOES_NOT_EXIST"}``)."""
    try:
        parsed = loads_json(body)
    except (ValueError, UnicodeDecodeError):
        return None
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None

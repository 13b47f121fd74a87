"""The store boundary: every driver error is classified once, here, as the call returns.

Each store names its driver's errors in ``classify`` (the one module importing the driver):
``StoreUnavailable`` for what may succeed later (the caller retries), ``StoreRefused`` for data the
store will never take (the caller sets it aside). Anything else is a bug and passes unchanged.

``StoreStatus`` remembers what the last calls said, for /readyz, /healthz, metrics and the dashboard:
the store is ``up`` after a call that answered and ``unavailable`` (or ``full``) after one that could not.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gateway.exceptions import GatewayError, StoreError, StoreRefused, StoreUnavailable

log = logging.getLogger("gateway.store")

C = TypeVar("C", bound=type)

# Not guarded: open/close fail start-up and shutdown plainly; leadership is a context manager that
# retries by itself.
UNGUARDED = frozenset({"open", "close", "leadership", "classify"})
# Store calls that only read (Store protocol, base.py): their success says little of a locked or full store.
READ_CALLS = frozenset(
    {
        "get_cursor",
        "accounts",
        "accounts_updated_since",
        "next_due_at",
        "dead_letters",
        "counts",
        "health_counts",
        "list_streams",
        "delivery_history",
        "failing_hosts",
        "funnel",
        "inbox",
        "unread_count",
        "newest_inbox_id",
    }
)


@dataclass
class StoreStatus:
    """The store's state as this process last saw it."""

    state: str = "up"  # up | unavailable | full
    reason: str = ""
    since: float = field(default_factory=time.time)
    outages: int = 0  # times the state left "up"
    errors: Counter[str] = field(default_factory=Counter)  # classified errors by code, refusals included
    # A locked store still answers reads: "unavailable" ends when a write succeeds, or a read that
    # failed in the outage does. A full one still takes writes that need no new page: "full" ends
    # when a call that found it full succeeds, or ``ping`` (a rolled-back write of a page) does.
    _failed_calls: set[str] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return self.state == "up"

    def answered(self, call: str) -> None:
        if self.state == "up":
            return
        proof = call in self._failed_calls or call == "ping"
        if not proof and (self.state == "full" or call in READ_CALLS):
            return
        log.warning("store answers again after %.1f s %s", time.time() - self.since, self.state)
        self.state, self.reason, self.since = "up", "", time.time()
        self._failed_calls.clear()

    def failed(self, error: StoreUnavailable, call: str) -> None:
        self.errors[error.code] += 1
        self._failed_calls.add(call)
        state = "full" if error.code == "storage_full" else "unavailable"
        if self.state != state:
            if self.state == "up":
                self.outages += 1
            log.error("store %s (%s): calls are retried until it answers", state, error)
            self.state, self.since = state, time.time()
        self.reason = str(error)[:300]

    def refused(self) -> None:
        self.errors["refused"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "reason": self.reason,
            "since": self.since,
            "outages": self.outages,
            "errors": dict(self.errors),
        }


class Classified(Protocol):
    status: StoreStatus

    @staticmethod
    def classify(exc: BaseException) -> StoreError | None: ...


def guard_calls(cls: C) -> C:
    """Wrap every public coroutine method of a store class: driver errors leave it classified, and
    each call's result updates ``self.status``."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or name in UNGUARDED or not inspect.iscoroutinefunction(fn):
            continue
        setattr(cls, name, _guarded(fn))
    return cls


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(self: Classified, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await fn(self, *args, **kwargs)
        except GatewayError as exc:  # ours (caps, already classified): the store did answer
            if isinstance(exc, StoreUnavailable):
                self.status.failed(exc, fn.__name__)
            raise
        except Exception as exc:
            error = self.classify(exc)
            if error is None:
                raise
            if isinstance(error, StoreUnavailable):
                self.status.failed(error, fn.__name__)
            elif isinstance(error, StoreRefused):
                self.status.answered(fn.__name__)
                self.status.refused()
            raise error from exc
        self.status.answered(fn.__name__)
        return result

    return call

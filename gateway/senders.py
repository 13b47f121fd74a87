"""Sending on every core: ``[push] processes`` dispatchers in processes of their own.

Encryption is most of a push's CPU, and the `cryptography` EC calls keep the GIL: two threads give
1.15× one, two processes 1.8× (bench/README.md). So the process with the worker role starts N
children (spawned, not forked: nothing of the parent's loop or sockets is inherited), each a
dispatcher on the same store. The store's leases keep at-least-once and dedupe exactly as for
workers started by hand; each child releases its claims when it stops.

Each child is tied to its parent by a socket pair (SOCK_SEQPACKET: one message each):
- parent → child: ``b"w"`` when ingest queued deliveries (the child's dispatcher wakes at once
  instead of at its next poll). Sent without blocking: a full socket already holds a wake.
- child → parent: its PushTally every REPORT_INTERVAL seconds, added up in the parent's /metrics.
  A child that dies keeps its last report in the sum, so counters never go back.
A child whose parent is gone (end of file) stops. A child that dies is started again, with backoff.
On shutdown the parent sends SIGTERM to every child and waits SHUTDOWN_WAIT seconds before killing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import random
import signal
import socket
import time
from collections.abc import Iterable
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import anyio

from gateway.backoff import backoff_delays
from gateway.config import Settings
from gateway.logfmt import setup_logging
from gateway.metrics import PushTally
from gateway.runtime import loop_options, tune_gc

if TYPE_CHECKING:
    from gateway.dispatcher import Dispatcher
    from gateway.metrics import Metrics

log = logging.getLogger(__name__)

REPORT_INTERVAL = 1.0  # seconds between a child's metric reports
SUPERVISE_INTERVAL = 0.5  # seconds between the parent's looks at its children
SHUTDOWN_WAIT = 15.0  # seconds children get to release their claims before they are killed
RESTART_INITIAL, RESTART_MAX = 1.0, 30.0  # seconds before starting a dead child again, doubling
MAX_REPORT_BYTES = 1 << 20
WAKE = b"w"


def sending_processes(settings: Settings) -> int:
    """How many processes send: ``[push] processes``, 0 meaning one per core this process may use."""
    configured = settings.push.processes
    if configured:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.channel: socket.socket | None = None
        self.tally = PushTally()  # its latest report
        self.restarts = backoff_delays(RESTART_INITIAL, RESTART_MAX, random.Random())
        self.start_after = 0.0


class SenderPool:
    """The parent's side: starts, wakes, hears from and stops the sending processes."""

    def __init__(self, settings: Settings, count: int) -> None:
        self._settings = settings
        self._children = [_Child(i) for i in range(count)]
        self._retired = PushTally()  # what children that died had reported
        self._context = multiprocessing.get_context("spawn")
        self.stopping = False  # set when the parent stops: children that exit are not started again

    @property
    def count(self) -> int:
        return len(self._children)

    def alive(self) -> int:
        return sum(1 for c in self._children if c.process is not None and c.process.is_alive())

    def tallies(self) -> Iterable[PushTally]:
        return [self._retired, *(c.tally for c in self._children)]

    def wake(self) -> None:
        for child in self._children:
            if child.channel is not None:
                with contextlib.suppress(BlockingIOError, OSError):  # full: a wake is waiting already
                    child.channel.send(WAKE)

    async def run(self) -> None:
        """Keep every child running until cancelled; then stop them all (shielded)."""
        try:
            async with anyio.create_task_group() as tg:
                for child in self._children:
                    self._start(child, tg)
                while True:
                    await anyio.sleep(SUPERVISE_INTERVAL)
                    for child in self._children:
                        if child.process is not None and not child.process.is_alive():
                            self._buried(child)
                        if child.process is None and not self.stopping and time.monotonic() >= child.start_after:
                            self._start(child, tg)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_all()

    def _start(self, child: _Child, tg: anyio.abc.TaskGroup) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=child_main, args=(self._settings, theirs), name=f"gateway-sender-{child.index}", daemon=True
        )
        try:
            process.start()
        except OSError as exc:  # out of processes or memory: try again later
            log.error("could not start sending process %d: %s", child.index, exc)
            mine.close()
            child.start_after = time.monotonic() + next(child.restarts)
            return
        finally:
            theirs.close()
        mine.setblocking(False)
        child.process, child.channel = process, mine
        log.info("sending process %d started (pid %s)", child.index, process.pid)
        tg.start_soon(self._hear, child, mine)

    async def _hear(self, child: _Child, channel: socket.socket) -> None:
        """Take the child's reports until its end of the socket closes."""
        while True:
            try:
                await anyio.wait_readable(channel)
                message = channel.recv(MAX_REPORT_BYTES)
            except BlockingIOError:
                continue
            except (OSError, anyio.ClosedResourceError):
                return
            if not message:
                return
            try:
                child.tally = PushTally.from_json(json.loads(message))
            except (ValueError, KeyError, TypeError) as exc:  # a bug of ours: keep the last good one
                log.error("sending process %d sent an unreadable report: %s", child.index, exc)

    def _buried(self, child: _Child) -> None:
        """A child died: keep what it reported, close its socket, start it again after a pause."""
        assert child.process is not None
        if not self.stopping:
            log.error(
                "sending process %d (pid %s) exited with %s: starting it again; its claims are taken again "
                "when their leases end",
                child.index,
                child.process.pid,
                child.process.exitcode,
            )
        self._retired.add(child.tally)
        child.tally = PushTally()
        if child.channel is not None:
            child.channel.close()
        child.process, child.channel = None, None
        child.start_after = time.monotonic() + next(child.restarts)

    async def _stop_all(self) -> None:
        self.stopping = True
        running = [c for c in self._children if c.process is not None]
        for child in running:
            assert child.process is not None
            if child.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_WAIT
        while any(c.process is not None and c.process.is_alive() for c in running):
            if time.monotonic() >= deadline:
                for child in running:
                    if child.process is not None and child.process.is_alive():
                        log.warning("sending process %d did not stop in time: killed", child.index)
                        child.process.kill()
                break
            await anyio.sleep(0.05)
        for child in running:
            if child.process is not None:
                child.process.join(1)
                self._read_last_report(child)
                self._buried(child)

    @staticmethod
    def _read_last_report(child: _Child) -> None:
        """What a stopped child said last (its listener was cancelled with the parent's task group)."""
        while child.channel is not None:
            try:
                message = child.channel.recv(MAX_REPORT_BYTES)
            except OSError:  # nothing more (BlockingIOError included)
                return
            if not message:
                return
            with contextlib.suppress(ValueError, KeyError, TypeError):
                child.tally = PushTally.from_json(json.loads(message))


# --- the child's side ---------------------------------------------------------------------------


def child_main(settings: Settings, channel: socket.socket) -> None:
    """A sending process: the dispatcher alone, tied to its parent by ``channel``."""
    from gateway.service import Gateway

    setup_logging(settings.logging)
    tune_gc()
    gateway = Gateway(settings, frozenset({"worker"}), parent=channel)
    anyio.run(gateway.run, backend_options=loop_options())


async def serve_parent(channel: socket.socket, dispatcher: Dispatcher, metrics: Metrics, stop: anyio.Event) -> None:
    """The child's end of the socket: wakes in, reports out; the parent gone (EOF) stops the child."""
    channel.setblocking(False)

    def send_report() -> None:
        with contextlib.suppress(OSError):  # busy or gone: the next report says it all, or nobody listens
            channel.send(json.dumps(metrics.tally.to_json()).encode())

    async def report() -> None:
        try:
            while True:
                await anyio.sleep(REPORT_INTERVAL)
                send_report()
        finally:
            send_report()  # the last one, as this process stops

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        while True:
            await anyio.wait_readable(channel)
            try:
                message = channel.recv(64)
            except BlockingIOError:
                continue
            except OSError:
                message = b""
            if not message:
                log.warning("the serving process is gone: this sending process stops")
                stop.set()
                break
            dispatcher.wake()
        tg.cancel_scope.cancel()

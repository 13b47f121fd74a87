"""Composition root: the store, the VAPID signer, the dispatcher and the HTTP server in one task group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from gateway.app import create_app
from gateway.config import PushSettings, Settings
from gateway.dispatcher import Dispatcher
from gateway.exceptions import StoreUnavailable
from gateway.ingest import StoreSink
from gateway.matcher import policy_from
from gateway.metrics import Metrics
from gateway.nearrpc import RpcUnavailable, chain_head
from gateway.senders import SenderPool, sending_processes, serve_parent
from gateway.slowclients import protocol_with_head_timeout
from gateway.store import Store, open_store
from gateway.webpush import (
    PushClient,
    VapidSigner,
    generate_key_file,
    key_file_is_private,
    public_key_b64,
    read_key_file,
)
from watchers import Watcher, build_watcher

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 3600.0  # seconds between retention purges
NEAR_KINDS = frozenset({"queryapi", "near-actions", "social-index"})  # their cursors are NEAR block heights


def load_vapid_signer(settings: Settings) -> VapidSigner:
    """The VAPID signer, generating the key file (mode 0600) on first start."""
    path = Path(settings.vapid.private_key_file)
    if path.exists():
        key = read_key_file(path)
        if not key_file_is_private(path):
            log.warning("VAPID key file %s is readable by others: chmod 600 it", path)
    else:
        key = generate_key_file(path)
        log.warning(
            "generated a new VAPID key pair in %s (mode 0600): back it up; browsers "
            "subscribed with its public key cannot be reached without it",
            path,
        )
    if settings.vapid.subject_is_placeholder:
        log.warning(
            "!!! [vapid] subject is %r, a placeholder: push services (Apple in particular) "
            "reject it. Set it to a real mailto: or https: contact. !!!",
            settings.vapid.subject,
        )
    return VapidSigner(key, settings.vapid.subject)


def push_client(signer: VapidSigner, push: PushSettings) -> PushClient:
    """The push client as ``[push]`` configures it (the dispatcher's, and the CLI's send-test)."""
    return PushClient(
        signer,
        ttl=push.ttl,
        urgency=push.urgency,
        timeout=push.request_timeout,
        concurrency_per_origin=push.concurrency_per_origin,
        keep_alive=push.keep_alive,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the Gateway owns shutdown (uvicorn would re-raise
    SIGTERM after serving, killing the process before in-flight claims are released)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ROLES = ("api", "worker", "watch")


class Gateway:
    """One gateway process. Roles: ``api`` (the HTTP API), ``worker`` (the dispatcher) and ``watch``
    (the watchers, each led by one process at a time). ``gateway serve`` runs all three."""

    def __init__(
        self, settings: Settings, roles: frozenset[str] = frozenset(ROLES), *, parent: socket.socket | None = None
    ) -> None:
        unknown = roles - set(ROLES)
        if unknown or not roles:
            raise ValueError(f"roles must be a non-empty subset of {ROLES}, not {sorted(roles)}")
        self.settings = settings
        self.roles = roles
        self._parent = parent  # a sending process's socket to the process that started it (senders.py)
        self._pool: SenderPool | None = None
        self._server: uvicorn.Server | None = None
        self.store: Store | None = None  # once running
        self._stopping = False
        self._stop_event: anyio.Event | None = None

    def stop(self) -> None:
        """Ask the process to finish: the server stops accepting, in-flight claims are released."""
        self._stopping = True
        if self._pool is not None:
            self._pool.stopping = True  # children that exit now are not started again
        if self._server is not None:
            self._server.should_exit = True
        if self._stop_event is not None:
            self._stop_event.set()

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        settings = self.settings
        signer = load_vapid_signer(settings)
        store = open_store(settings.storage.url, **settings.storage.open_options())
        await store.open()
        self.store = store
        self._stop_event = anyio.Event()
        if self._stopping:
            self._stop_event.set()
        try:
            push = settings.push
            async with push_client(signer, push) as client:
                metrics = Metrics()
                dispatcher = Dispatcher(
                    store,
                    client,
                    push,
                    links=settings.link_templates,
                    explorer=(settings.explorer.transaction, settings.explorer.account),
                    metrics=metrics,
                )
                # [push] processes: the worker role's sending goes to processes of its own (senders.py).
                count = sending_processes(settings) if "worker" in self.roles and self._parent is None else 0
                pool = self._pool = SenderPool(settings, count) if count > 1 else None
                dispatching = "worker" in self.roles and pool is None
                # Without a local worker, workers elsewhere find new deliveries at their next poll.
                wake = pool.wake if pool is not None else dispatcher.wake if dispatching else (lambda: None)
                if pool is not None:
                    metrics.tallies = pool.tallies
                policy = policy_from(settings.matching, settings.push)
                sinks = {
                    w.name: StoreSink(store, policy, wake)
                    for w in settings.watchers
                    if w.enabled and "watch" in self.roles
                }
                watchers = [build_watcher(w, sinks[w.name]) for w in settings.watchers if w.name in sinks]
                async with anyio.create_task_group() as tg:
                    if dispatching:
                        tg.start_soon(dispatcher.run)
                    if pool is not None:
                        tg.start_soon(pool.run)
                    if self._parent is not None:
                        tg.start_soon(serve_parent, self._parent, dispatcher, metrics, self._stop_event)
                    elif "worker" in self.roles:  # once per deployment's worker, not per sending process
                        tg.start_soon(self._housekeeping, store)
                    for watcher in watchers:
                        tg.start_soon(self._lead, store, watcher, sinks[watcher.name])
                    near_watchers = [w for w in watchers if w.kind in NEAR_KINDS]
                    if near_watchers and settings.metrics.chain_head_interval > 0:
                        tg.start_soon(self._follow_chain_head, near_watchers)
                    if threading.current_thread() is threading.main_thread():
                        tg.start_soon(self._stop_on_signal)
                    if self._parent is None:
                        roles = ",".join(r for r in ROLES if r in self.roles)
                        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
                        senders = f" sending_processes={pool.count}" if pool is not None else ""
                        print(f"VAPID public key: {signer.public_key}", flush=True)
                        print(f"gateway running roles={roles} loop={loop}{senders}", flush=True)
                    if "api" in self.roles:
                        app = create_app(
                            settings,
                            store,
                            signer.public_key,
                            on_ingest=wake,
                            watcher_states=lambda: {w.name: w.state.snapshot() for w in watchers},
                            metrics=metrics,
                            sender=client,
                        )
                        await self._serve_api(app, task_status)
                    else:
                        task_status.started(0)
                        await self._stop_event.wait()
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await store.close()
        log.info("gateway stopped")

    async def _serve_api(self, app: Any, task_status: TaskStatus[int]) -> None:
        settings = self.settings
        sock = bind_socket(settings.server.host, settings.server.port)
        port = sock.getsockname()[1]
        limits = settings.limits
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            http=protocol_with_head_timeout(limits.request_read_timeout),
            timeout_keep_alive=int(limits.keep_alive_timeout),
            proxy_headers=True,
            forwarded_allow_ips=limits.forwarded_allow_ips,
        )
        self._server = _Server(config)
        if self._stopping:
            self._server.should_exit = True
        log.info("gateway listening on http://%s:%d", settings.server.host, port)
        print(f"gateway listening on http://{settings.server.host}:{port}", flush=True)
        task_status.started(port)
        await self._server.serve(sockets=[sock])

    async def _lead(self, store: Store, watcher: Watcher, sink: StoreSink) -> None:
        """Run ``watcher`` only while this process leads it; wait to lead again when that ends (a store
        outage ends it too: the leadership is taken again, here or elsewhere, when the store is back).
        The watcher's writes go through its lease, so they stop the moment the leadership does."""
        while True:
            async with store.leadership(f"watcher:{watcher.name}") as lease:
                log.info("watcher %s (%s): leading it from this process", watcher.name, watcher.kind)
                print(f"watcher {watcher.name} leading", flush=True)
                sink.lease = lease
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(watcher.run)
                        await lease.wait_lost()
                        tg.cancel_scope.cancel()
                finally:
                    sink.lease = None
                    watcher.state.connected = False
            log.warning("watcher %s: leadership lost; waiting to lead again", watcher.name)
            print(f"watcher {watcher.name} lost leadership", flush=True)

    async def _follow_chain_head(self, watchers: list[Watcher]) -> None:
        """Ask NEAR RPC for the chain head now and then, so each NEAR watcher knows its lag in blocks."""
        security, failed = self.settings.security, False
        while True:
            try:
                head = await chain_head(security.near_rpc_url, security.rpc_timeout)
                for watcher in watchers:
                    watcher.state.chain_head = head
                failed = False
            except RpcUnavailable as exc:
                if not failed:  # once per outage
                    log.warning("chain head unknown (%s): watcher lag in blocks is not reported", exc)
                failed = True
            await anyio.sleep(self.settings.metrics.chain_head_interval)

    async def _stop_on_signal(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                self.stop()
                return

    async def _housekeeping(self, store: Store) -> None:
        retention = self.settings.push.retention_days * 86400
        while True:
            try:
                now = time.time()
                purged = await store.purge(now - retention, now - self.settings.inbox.days * 86400)
                if purged:
                    log.info(
                        "purged %d finished deliveries older than %.0f days", purged, self.settings.push.retention_days
                    )
            except StoreUnavailable as exc:  # the next round purges what this one could not
                log.warning("retention purge skipped: %s", exc)
            except Exception:
                log.exception("retention purge failed")
            await anyio.sleep(HOUSEKEEPING_INTERVAL)


__all__ = ["Gateway", "load_vapid_signer", "public_key_b64"]

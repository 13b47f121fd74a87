"""A desktop for headless Chromium: its own D-Bus session bus and a fake freedesktop notification
daemon on it. Chromium shows web notifications through org.freedesktop.Notifications when that name
has an owner, and turns the daemon's ActionInvoked signal into a real (trusted) notificationclick,
so tests click notifications the way a user does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from typing import Any

from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface, method
from dbus_next.service import signal as dbus_signal


class _Notifications(ServiceInterface):  # method annotations are D-Bus signatures (dbus-next)
    def __init__(self, shown: list[dict[str, Any]], lock: threading.Lock) -> None:
        super().__init__("org.freedesktop.Notifications")
        self._shown = shown
        self._lock = lock
        self._next = 1

    @method()
    def GetCapabilities(self) -> "as":
        return ["actions", "body", "persistence"]

    @method()
    def Notify(
        self,
        app_name: "s",
        replaces_id: "u",
        app_icon: "s",
        summary: "s",
        body: "s",
        actions: "as",
        hints: "a{sv}",
        expire_timeout: "i",
    ) -> "u":
        with self._lock:
            nid = replaces_id or self._next
            self._next += 1
            self._shown.append({"id": nid, "summary": summary, "body": body, "actions": list(actions)})
        return nid

    @method()
    def CloseNotification(self, nid: "u"):
        return None

    @method()
    def GetServerInformation(self) -> "ssss":
        return ["gateway-tests", "near-push-gateway", "1.0", "1.2"]

    @dbus_signal()
    def ActionInvoked(self, nid: int, key: str) -> "us":
        return [nid, key]


class Desktop:
    """A session bus with a notification daemon; ``env`` is what Chromium needs to use it."""

    def __init__(self) -> None:
        self._bus_proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._bus_proc.stdout is not None
        self.address = self._bus_proc.stdout.readline().strip()
        self.env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address}
        self.shown: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._iface: _Notifications | None = None
        self._bus: MessageBus | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "notification daemon did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._bus = await MessageBus(bus_address=self.address).connect()
            self._iface = _Notifications(self.shown, self._lock)
            self._bus.export("/org/freedesktop/Notifications", self._iface)
            await self._bus.request_name("org.freedesktop.Notifications")
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def wait_shown(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.shown) >= n:
                    return list(self.shown)
            time.sleep(0.05)
        raise AssertionError(f"expected {n} notifications on the desktop, got {len(self.shown)}")

    def click(self, nid: int, action: str = "default") -> None:
        """Click the notification's body (or the button whose key is ``action``), as a user would."""
        iface = self._iface
        assert iface is not None
        self._loop.call_soon_threadsafe(iface.ActionInvoked, nid, action)

    def close(self) -> None:
        async def disconnect() -> None:
            if self._bus is not None:
                self._bus.disconnect()
                await self._bus.wait_for_disconnect()
                self._bus._sock.close()  # dbus-next leaves its socket open after disconnecting

        asyncio.run_coroutine_threadsafe(disconnect(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._bus_proc.send_signal(signal.SIGTERM)
        self._bus_proc.wait(10)
        if self._bus_proc.stdout is not None:
            self._bus_proc.stdout.close()

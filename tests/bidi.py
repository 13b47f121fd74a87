"""Debian's Firefox ESR, headless, driven over WebDriver BiDi (its built-in remote protocol) from
Python over ``websockets``: no browser download, no driver binary.

Each ``Firefox`` is a fresh profile whose prefs point its push service at a local one
(tests/mozpush.py) and refuse every other outbound connection: no telemetry, updates, safe browsing
or captive-portal checks reach for the internet.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"


def prefs(push_server: str) -> dict[str, Any]:
    return {
        # the push service: ours, over ws:// on loopback
        "dom.push.serverURL": push_server,
        "dom.push.testing.allowInsecureServerURL": True,
        "dom.push.connection.enabled": True,
        "dom.push.retryBaseInterval": 200,  # reconnect at once after the push service closed the socket
        "dom.push.enabled": True,
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        "dom.webnotifications.enabled": True,
        "permissions.default.desktop-notification": 1,  # notifications allowed without a prompt
        "alerts.useSystemBackend": False,  # headless has no D-Bus: Firefox's own alerts, or none are shown
        # nothing else leaves the machine
        "network.proxy.type": 1,
        "network.proxy.http": "127.0.0.1",
        "network.proxy.http_port": 9,
        "network.proxy.ssl": "127.0.0.1",
        "network.proxy.ssl_port": 9,
        "network.proxy.no_proxies_on": "127.0.0.1,localhost",
        "network.proxy.allow_hijacking_localhost": False,
        "app.update.enabled": False,
        "app.normandy.enabled": False,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.connectivity-service.enabled": False,
        "extensions.update.enabled": False,
        "remote.prefs.recommended": True,
    }


class Firefox:
    """One headless Firefox with its own profile, and its BiDi session."""

    def __init__(self, push_server: str) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="firefox-"))
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs(push_server).items())
        )
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(self.profile), "--remote-debugging-port=0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        found = threading.Event()
        self._url = ""

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if "WebDriver BiDi listening on " in line and not found.is_set():
                    self._url = line.split("listening on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60):
            self.close()
            raise RuntimeError(f"Firefox did not start its BiDi server: {''.join(self.stderr)[-2000:]}")
        self._stack = contextlib.ExitStack()
        self._id = 0
        try:
            self._ws: ClientConnection = self._stack.enter_context(connect(f"{self._url}/session", max_size=2**24))
            self.command("session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}})
            tree = self.command("browsingContext.getTree", {})
            self.context = tree["contexts"][0]["context"]
        except BaseException:
            self.close()  # no browser left behind
            raise

    def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        mine = self._id
        self._ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            answer = json.loads(self._ws.recv(timeout=60))
            if answer.get("id") != mine:  # an event, or another command's answer
                continue
            if answer.get("type") == "error":
                raise RuntimeError(f"{method}: {answer.get('error')}: {answer.get('message')}")
            result: dict[str, Any] = answer["result"]
            return result

    def navigate(self, url: str) -> None:
        self.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited), as JSON."""
        result = self.command(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self.context},
                "awaitPromise": True,
                "userActivation": True,
            },
        )
        if result.get("type") == "exception":
            raise RuntimeError(f"in the page: {result['exceptionDetails'].get('text')}")
        value = result["result"]
        return json.loads(value["value"]) if value.get("type") == "string" else None

    def click(self, selector: str) -> None:
        """A real click (user activation) on the element ``selector`` finds."""
        found = self.command(
            "browsingContext.locateNodes",
            {"context": self.context, "locator": {"type": "css", "value": selector}},
        )
        [node] = found["nodes"]
        origin = {"type": "element", "element": {"sharedId": node["sharedId"]}}
        self.command(
            "input.performActions",
            {
                "context": self.context,
                "actions": [
                    {
                        "type": "pointer",
                        "id": "mouse",
                        "actions": [
                            {"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
                            {"type": "pointerDown", "button": 0},
                            {"type": "pointerUp", "button": 0},
                        ],
                    }
                ],
            },
        )

    def wait(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` in the page until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true in the page: {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            if hasattr(self, "_ws"):
                with contextlib.suppress(Exception):  # closing: the connection may be gone already
                    self.command("browser.close", {})
                self._stack.close()
        finally:
            if not hasattr(self, "_ws"):  # no session to close it through
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

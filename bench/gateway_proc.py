"""Run a `gateway serve` subprocess for benchmarks and read its CPU time and memory from /proc.

CPU time counts the whole process tree: with ``[push] processes`` (default one per core) the worker
role sends from child processes, and their CPU is the gateway's too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def proc_children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (every thread's children)."""
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children.extend(int(c) for c in (task / "children").read_text().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return children


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(proc_children(p))
    return tree


def proc_tree_cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its live descendants, with the children each of them has reaped
    (cutime + cstime): a child that ends moves its time into its parent's, so the sum never drops."""
    total = 0.0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile: its time is in its parent's cutime now
            continue
        total += sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime, stime, cutime, cstime
    return total


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class GatewayProc:
    def __init__(
        self,
        push_prefixes: list[str],
        *,
        db: str | None = None,
        extra_toml: str = "",
        push_toml: str = "",
        storage_url: str | None = None,
        command: str = "serve",
        ca_file: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``ca_file``: a certificate the gateway trusts for TLS to push services (as SSL_CERT_FILE, which
        the default verified context reads: bench.fakepush's self-signed one); ``env``: more variables."""
        self.dir = tempfile.mkdtemp(prefix="bench-gw-")
        self.db = db or os.path.join(self.dir, "gw.db")
        storage = storage_url or f"sqlite:///{self.db}"
        config = Path(self.dir) / "gateway.toml"
        allowed = ", ".join(f'"{p}/"' for p in push_prefixes)
        no_watchers = "" if "[[watchers]]" in extra_toml else "watchers = []  # not the embedded mainnet default"
        config.write_text(f"""
{no_watchers}
[server]
port = 0
max_events_body_bytes = 16777216
[storage]
url = "{storage}"
[vapid]
private_key_file = "{self.dir}/vapid.pem"
subject = "mailto:bench@gateway.test"
[push]
allowed_endpoints = [{allowed}]
{push_toml}
[ingest]
token = "{TOKEN}"
max_batch = 100000
[matching]
max_per_endpoint_per_day = 0
[logging]
level = "warning"
[limits]
per_ip_rate = 0
max_streams_per_account = 0
max_accounts_per_endpoint = 0
{extra_toml}
""")
        child_env = {**os.environ, **(env or {})}
        if ca_file is not None:
            child_env["SSL_CERT_FILE"] = ca_file
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", command, "--config", str(config)],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = ""
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("gateway listening on "):
                self.url = line.split()[-1]
                break
            if line.startswith("gateway running roles=") and "api" not in line:
                break  # a worker or watcher: no HTTP API
        self.http = httpx.Client(base_url=self.url or "http://127.0.0.1:9", timeout=120)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the gateway process and its sending processes."""
        return proc_tree_cpu_seconds(self.pid)

    def settle(self, timeout: float = 20.0) -> None:
        """Wait until the process tree is idle (its sending processes have started and imported):
        less than 20 ms of CPU in 0.3 s. Starting takes CPU that is not the pushes'."""
        deadline = time.time() + timeout
        last = self.cpu()
        while time.time() < deadline:
            time.sleep(0.3)
            now = self.cpu()
            if now - last < 0.02:
                return
            last = now

    def rss_mb(self) -> float:
        """RSS of the gateway process itself (not its sending processes: ``rss_all_mb``)."""
        return proc_rss_mb(self.pid)

    def rss_all_mb(self) -> list[float]:
        """RSS of the gateway process and of each of its child processes, in that order."""
        return [proc_rss_mb(p) for p in proc_tree(self.pid)]

    def create(self, account: str, subscription: dict[str, Any], gateway: str = "https://near.social") -> None:
        r = self.http.post(
            "/subscriptions/create", json={"accountId": account, "gateway": gateway, "subscription": subscription}
        )
        r.raise_for_status()

    def ingest(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.http.post("/events", json=rows, headers={"Authorization": f"Bearer {TOKEN}"})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def close(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

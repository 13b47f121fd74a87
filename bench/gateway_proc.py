"""Run a `gateway serve` subprocess for benchmarks and read its CPU time and memory from /proc."""

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
    ) -> None:
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
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", command, "--config", str(config)],
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
        return proc_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

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

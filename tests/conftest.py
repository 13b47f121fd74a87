from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest

from gateway.config import Settings, load_settings
from gateway.service import Gateway
from tests.fakepush import FakePushService

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
LOCAL_FIXTURES = Path(__file__).resolve().parent / "fixtures"
INGEST_TOKEN = "test-ingest-token"


def fixture_path(name: str) -> Path:
    """A sample from ../shared/fixtures, or the copy kept in tests/fixtures."""
    shared = FIXTURES / name
    return shared if shared.exists() else LOCAL_FIXTURES / name


@pytest.fixture
def fake_push() -> Iterator[FakePushService]:
    service = FakePushService()
    yield service
    service.close()


class RunningGateway:
    """A gateway running in this process (its own event loop thread), with an HTTP client."""

    def __init__(self, settings: Settings, portal: Any) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self._portal = portal
        self._future: Future[Any]
        self._future, port = portal.start_task(self.gateway.run)
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.db_path = settings.storage.url.removeprefix("sqlite:///")

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kw)

    def ingest(self, rows: Any) -> httpx.Response:
        r = self.http.post("/events", json=rows, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
        assert r.status_code == 202, r.text
        return r

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=10)
        conn.row_factory = sqlite3.Row
        return conn

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.db() as conn:
            return conn.execute(sql, args).fetchall()

    def stop(self) -> None:
        if self.http.is_closed:
            return
        self.http.close()
        self._portal.call(self.gateway.stop)
        self._future.result(timeout=15)


@pytest.fixture
def make_settings(tmp_path: Path, fake_push: FakePushService) -> Callable[..., Settings]:
    def make(config_file: Path | None = None, **sections: Any) -> Settings:
        base: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0},
            "storage": {"url": f"sqlite:///{tmp_path / 'gateway.db'}"},
            "vapid": {"private_key_file": str(tmp_path / "vapid_private.pem"), "subject": "mailto:ops@gateway.test"},
            "push": {
                "allowed_endpoints": [*load_settings().push.allowed_endpoints, fake_push.url + "/"],
                "retry_initial_delay": 0.2,
                "retry_max_delay": 2.0,
                "poll_interval": 0.2,
                "claim_lease": 5.0,
                # sending in this process: these tests look inside it; the default (one sending
                # process per core) runs in the subprocess tests (test_process.py, test_senders.py)
                "processes": 1,
            },
            "ingest": {"token": INGEST_TOKEN},
        }
        if config_file is None or "[[watchers]]" not in config_file.read_text():
            base["watchers"] = []  # not the embedded default: tests never reach mainnet
        for name, values in sections.items():
            if isinstance(values, dict):
                base.setdefault(name, {}).update(values)
            else:
                base[name] = values
        return load_settings(config_file, base)

    return make


@pytest.fixture
def start_gateway(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []
    with anyio.from_thread.start_blocking_portal() as portal:

        def start(config_file: Path | None = None, **sections: Any) -> RunningGateway:
            gw = RunningGateway(make_settings(config_file, **sections), portal)
            started.append(gw)
            return gw

        yield start
        for gw in started:
            gw.stop()


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gateway()


@pytest.fixture
def create_body() -> dict[str, Any]:
    """The exact body NEAR frontends POST to /subscriptions/create (shared fixture)."""
    body: dict[str, Any] = json.loads(fixture_path("subscriptions-create.json").read_text())
    return body


class Clock:
    """A clock the test moves by hand (passed to code that takes ``clock=``)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def row(id: int, receiver: str = "bob.near", value_type: str = "like", **extra: Any) -> dict[str, Any]:
    """A notification row in the QueryAPI shape."""
    base: dict[str, Any] = {
        "id": id,
        "blockHeight": 130000000 + id,
        "initiatedBy": "alice.near",
        "itemType": "social",
        "message": None,
        "path": f"{receiver}/post/main",
        "receiver": receiver,
        "valueType": value_type,
        "devhubPostId": None,
        "actionAtBlockHeight": 129999000,
    }
    base.update(extra)
    return base


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Gateway subprocesses (tests.test_process.GatewayProcess) a test started: killed and closed at the end."""
    started: list[Any] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
        if p.proc.stdout is not None and not p.proc.stdout.closed:
            p.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server (dropped afterwards); skips when none answers."""
    import asyncpg

    from tests.test_store import POSTGRES_URL, _postgres_reachable

    reason = asyncio.run(_postgres_reachable())
    if reason:
        pytest.skip(reason)
    schema = f"gw_test_{uuid.uuid4().hex[:12]}"
    yield schema

    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(drop())

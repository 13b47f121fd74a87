"""The HTTP boundary of the polling watchers: the only importer of ``httpx`` in watchers/."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.models import loads_json
from watchers.base import WatcherError

MAX_PAGE_BYTES = 16 * 1024 * 1024


class JsonHttp:
    """Fetches JSON documents; every failure is a WatcherError saying what went wrong."""

    def __init__(self, timeout: float, concurrency: int = 8) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False, headers={"User-Agent": "near-push-gateway"}
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        try:
            response = await self._client.request(method, url, json=body)
        except httpx.TimeoutException as exc:
            raise WatcherError(f"timeout: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise WatcherError(f"request failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise WatcherError(f"HTTP {response.status_code}: {' '.join(response.text.split())[:200]}")
        if len(response.content) > MAX_PAGE_BYTES:
            raise WatcherError("answer too large")
        try:
            return loads_json(response.content)
        except ValueError as exc:
            raise WatcherError("answer is not JSON") from exc

"""The HTTP boundary of the polling watchers: the only importer of ``httpx`` in watchers/."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

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


class Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class BodyTooLarge(WatcherError):
    """The answer's body is over the caller's bound (it was not read to the end)."""


class RawHttp:
    """GETs that never follow redirects and read at most ``max_bytes`` of a body (the callers decide
    what a status means). Transport failures, timeouts and bodies cut short are WatcherError."""

    def __init__(self, timeout: float, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False, headers={"User-Agent": "near-push-gateway"}
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, url: str, headers: Mapping[str, str], max_bytes: int) -> Answer:
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                declared = response.headers.get("content-length", "")
                if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
                    raise BodyTooLarge(f"body of {declared} bytes is over the {max_bytes}-byte limit")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():  # decoded: the bound holds for gzip too
                    size += len(chunk)
                    if size > max_bytes:
                        raise BodyTooLarge(f"body is over the {max_bytes}-byte limit")
                    chunks.append(chunk)
                return Answer(response.status_code, dict(response.headers), b"".join(chunks))
        except httpx.TimeoutException as exc:
            raise WatcherError(f"timeout: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:  # refused, reset, DNS, a body cut short (RemoteProtocolError)
            raise WatcherError(f"request failed: {type(exc).__name__}: {exc}") from exc

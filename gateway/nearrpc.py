"""NEAR RPC: which access keys an account has (``view_access_key``), the chain head, and fungible
tokens' metadata (``ft_metadata``); answers cached."""

from __future__ import annotations

import base64
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import httpx

from gateway.exceptions import GatewayError

Permission = Literal["full_access", "function_call"]
K = TypeVar("K")
V = TypeVar("V")
CACHE_ENTRIES = 10_000
NEGATIVE_CACHE_SECONDS = 30.0  # an unknown key may be added soon; ask again sooner
NOT_FOUND_CAUSES = frozenset({"UNKNOWN_ACCESS_KEY", "UNKNOWN_ACCOUNT", "INVALID_ACCOUNT"})


class RpcUnavailable(GatewayError):
    """The RPC did not answer, or answered something we cannot read."""


def permission_from_answer(answer: Any) -> Permission | None:
    """The key's permission from a JSON-RPC answer; None when the key or account does not exist."""
    if not isinstance(answer, dict):
        raise RpcUnavailable("the RPC answer is not a JSON object")
    error = answer.get("error")
    if isinstance(error, dict):
        cause = error.get("cause")
        if isinstance(cause, dict) and cause.get("name") in NOT_FOUND_CAUSES:
            return None
        raise RpcUnavailable(f"RPC error {str(error.get('name') or error.get('message'))[:80]}")
    result = answer.get("result")
    if not isinstance(result, dict):
        raise RpcUnavailable("the RPC answer has no result")
    if "error" in result:  # older nodes report a missing key inside the result
        if "does not exist" in str(result["error"]):
            return None
        raise RpcUnavailable(f"RPC error {str(result['error'])[:80]}")
    permission = result.get("permission")
    if permission == "FullAccess":
        return "full_access"
    if isinstance(permission, dict) and "FunctionCall" in permission:
        return "function_call"
    raise RpcUnavailable("the RPC answer has no permission")


class _Expiring(Generic[K, V]):
    """At most CACHE_ENTRIES answers, each until its own expiry; the least recently stored go first."""

    def __init__(self) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> tuple[bool, V | None]:
        entry = self._entries.get(key)
        return (True, entry[1]) if entry is not None and entry[0] > now else (False, None)

    def put(self, key: K, value: V, expires: float) -> None:
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        if len(self._entries) > CACHE_ENTRIES:
            self._entries.popitem(last=False)


class AccessKeys:
    def __init__(
        self,
        rpc_url: str,
        *,
        timeout: float,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = rpc_url
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: _Expiring[tuple[str, str], Permission | None] = _Expiring()

    async def permission(self, account_id: str, public_key: str) -> Permission | None:
        key = (account_id, public_key)
        now = self._clock()
        hit, cached = self._cache.get(key, now)
        if hit:
            return cached
        found = await self._ask(account_id, public_key)
        ttl = self._cache_seconds if found is not None else min(self._cache_seconds, NEGATIVE_CACHE_SECONDS)
        self._cache.put(key, found, now + ttl)
        return found

    async def _ask(self, account_id: str, public_key: str) -> Permission | None:
        params = {
            "request_type": "view_access_key",
            "finality": "final",
            "account_id": account_id,
            "public_key": public_key,
        }
        return permission_from_answer(await rpc_call(self._url, self._timeout, "query", params))


async def rpc_call(rpc_url: str, timeout: float, method: str, params: dict[str, Any]) -> Any:  # noqa: ASYNC109
    """One JSON-RPC call; its decoded answer (errors included). Never follows a redirect."""
    request = {"jsonrpc": "2.0", "id": "gateway", "method": method, "params": params}
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            return (await client.post(rpc_url, json=request)).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise RpcUnavailable(f"NEAR RPC {method}: {type(exc).__name__}") from exc


async def chain_head(rpc_url: str, timeout: float) -> int:  # noqa: ASYNC109  (an HTTP client timeout)
    """The height of the newest final block (RPC ``block``, finality final)."""
    answer = await rpc_call(rpc_url, timeout, "block", {"finality": "final"})
    try:
        height = answer["result"]["header"]["height"]
    except (KeyError, TypeError) as exc:
        raise RpcUnavailable("NEAR RPC block: no header height") from exc
    if not isinstance(height, int):
        raise RpcUnavailable("NEAR RPC block: no integer height")
    return height


class TokenMetadata(NamedTuple):
    symbol: str | None
    decimals: int | None


UNKNOWN_TOKEN = TokenMetadata(None, None)
MAX_SYMBOL_CHARS = 16
MAX_DECIMALS = 38  # a u128 has 39 digits


def token_metadata_from_answer(answer: Any) -> TokenMetadata:
    """NEP-148 ``ft_metadata`` from a ``call_function`` answer (its result is the return value's bytes)."""
    try:
        raw = bytes(answer["result"]["result"])
        metadata = json.loads(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise RpcUnavailable("NEAR RPC ft_metadata: no readable result") from exc
    if not isinstance(metadata, dict):
        raise RpcUnavailable("NEAR RPC ft_metadata: the result is not an object")
    symbol, decimals = metadata.get("symbol"), metadata.get("decimals")
    ok_symbol = isinstance(symbol, str) and 0 < len(symbol) <= MAX_SYMBOL_CHARS and symbol.isprintable()
    ok_decimals = isinstance(decimals, int) and not isinstance(decimals, bool) and 0 <= decimals <= MAX_DECIMALS
    return TokenMetadata(symbol if ok_symbol else None, decimals if ok_decimals else None)


class TokenMetadataCache:
    """Symbol and decimals of fungible tokens, asked of NEAR RPC once per token and cached; a token
    the RPC cannot answer for is asked again after a while, and shown meanwhile in raw units."""

    def __init__(
        self,
        rpc_url: str,
        *,
        timeout: float,
        cache_seconds: float = 86400.0,
        retry_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = rpc_url
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._cache: _Expiring[str, TokenMetadata] = _Expiring()

    async def get(self, contract: str) -> TokenMetadata:
        now = self._clock()
        hit, cached = self._cache.get(contract, now)
        if hit and cached is not None:
            return cached
        params = {
            "request_type": "call_function",
            "finality": "final",
            "account_id": contract,
            "method_name": "ft_metadata",
            "args_base64": base64.b64encode(b"{}").decode(),
        }
        try:
            found = token_metadata_from_answer(await rpc_call(self._url, self._timeout, "query", params))
            expires = now + self._cache_seconds
        except RpcUnavailable:
            found, expires = UNKNOWN_TOKEN, now + self._retry_seconds
        self._cache.put(contract, found, expires)
        return found

"""Every error the gateway raises on purpose, in one tree.

    GatewayError
    ├── ConfigError                 a setting is missing, malformed or unsafe (start-up fails)
    ├── VapidKeyError               the VAPID key file cannot be read or created
    ├── StoreError                  the store cannot be opened or migrated, or failed a call
    │   ├── StoreUnavailable        transient (connection lost, busy, full): retry later
    │   └── StoreRefused            permanent: the store refuses this data (out of range, too big)
    ├── StreamCapReached            an account or endpoint already has its most streams
    └── ApiError                    a request is refused; carries HTTP status + stable code
        ├── BadRequest              400: the body is well-formed JSON but not valid
        ├── Unauthorized            401: missing or wrong bearer token
        ├── Forbidden               403: the operation is disabled by configuration
        ├── NotFound                404
        ├── PayloadTooLarge         413: the body exceeds the configured limit
        └── TooManyRequests         429: over a rate; says when to retry (Retry-After)

Third-party errors (aiohttp, sqlite3, cryptography) are translated at the one module that
imports each library; nothing above this module is imported here.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error raised on purpose by the gateway."""


class ConfigError(GatewayError):
    """A setting is missing, malformed or unsafe."""


class VapidKeyError(GatewayError):
    """The VAPID private key cannot be read, parsed or written."""


class StoreError(GatewayError):
    """The store cannot be opened or migrated, or failed a call."""


class StoreUnavailable(StoreError):
    """The store cannot answer now (connection lost or refused, restarting, locked, full): the same
    call may succeed later, so callers retry with backoff and never give up on it.

    ``code`` is stable: ``store_unavailable``, or ``storage_full`` when the disk or file is full.
    """

    def __init__(self, message: str, code: str = "store_unavailable") -> None:
        super().__init__(message)
        self.code = code


class StoreRefused(StoreError):
    """The store refused this data for good (a number out of range, a value too big): retrying the
    same call fails the same way, so the data is set aside as a fault and the rest goes on."""


class StreamCapReached(GatewayError):
    """Creating the stream would exceed ``max_streams_per_account`` or ``max_accounts_per_endpoint``."""

    def __init__(self, scope: str, cap: int) -> None:
        super().__init__(f"{scope} cap of {cap} reached")
        self.scope = scope  # "account" or "endpoint"
        self.cap = cap


class ApiError(GatewayError):
    """A refused request: rendered as JSON with a stable ``code`` by the app's one handler."""

    status = 400
    reason = "Bad Request"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BadRequest(ApiError):
    status = 400
    reason = "Bad Request"


class Unauthorized(ApiError):
    status = 401
    reason = "Unauthorized"


class Forbidden(ApiError):
    status = 403
    reason = "Forbidden"


class NotFound(ApiError):
    status = 404
    reason = "Not Found"


class PayloadTooLarge(ApiError):
    status = 413
    reason = "Payload Too Large"


class TooManyRequests(ApiError):
    status = 429
    reason = "Too Many Requests"

    def __init__(self, code: str, message: str, retry_after: str = "1") -> None:
        super().__init__(code, message)
        self.retry_after = retry_after  # whole seconds, for the Retry-After header


class ServiceUnavailable(ApiError):
    status = 503
    reason = "Service Unavailable"

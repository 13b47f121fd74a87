"""The settings tree: defaults < TOML file < ``GATEWAY_*`` environment variables.

Every key here is documented, with its default, in config.example.toml (a test checks it).
Environment variables name the path with double underscores: ``GATEWAY_SERVER__PORT=9000``,
``GATEWAY_PUSH__ALLOWED_ENDPOINTS='["https://fcm.googleapis.com/"]'`` (lists as JSON).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.endpoints import DEFAULT_ALLOWED_ENDPOINTS, EndpointPrefix, parse_prefix
from gateway.exceptions import ConfigError
from gateway.models import NEAR_ROW_FIELDS

PLACEHOLDER_SUBJECT = "mailto:admin@example.com"
KIB = 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Largest accepted body for the public NEAR routes (a subscription is < 1 KiB).
    max_body_bytes: int = Field(16 * KIB, ge=1 * KIB)
    # Largest accepted body for POST /events (a batch of rows).
    max_events_body_bytes: int = Field(1024 * KIB, ge=1 * KIB)


class LimitsSettings(_Section):
    """Abuse limits on the public API (every route but POST /events, which has its token, and /healthz)."""

    per_ip_rate: float = Field(2.0, ge=0)  # requests per second per client IP (IPv6: per /64); 0 = no limit
    per_ip_burst: int = Field(30, ge=1)  # requests a client IP may make at once before the rate applies
    per_origin_rate: float = Field(100.0, ge=0)  # requests/s per keyed frontend (its X-Gateway-Key); 0 = off
    per_origin_burst: int = Field(1000, ge=1)
    tracked_clients: int = Field(100_000, ge=100)  # buckets kept in memory; the least recently used go first
    # receipts (POST /v1/receipts) per browser: a burst of notifications shown at once, then this rate
    receipts_per_endpoint_rate: float = Field(1.0, ge=0)  # receipts/s per endpoint; 0 = no limit
    receipts_per_endpoint_burst: int = Field(60, ge=1)
    # streams (browsers) one account may have; at the cap the least recently refreshed gives way; 0 = no cap
    max_streams_per_account: int = Field(50, ge=0)
    max_accounts_per_endpoint: int = Field(20, ge=0)  # accounts one browser subscription may carry; 0 = no cap
    request_read_timeout: float = Field(10.0, gt=0)  # seconds a client may take to send a request head, and a body
    keep_alive_timeout: int = Field(5, ge=1)  # seconds an idle HTTP connection stays open
    # Reverse proxies whose X-Forwarded-For names the client IP.
    forwarded_allow_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1"])


class SecuritySettings(_Section):
    # Only frontends listed in [[gateways]] with a key may use the public API (header X-Gateway-Key).
    require_gateway_key: bool = False
    # Creating a stream needs a NEP-413 message signed by an access key of the account.
    require_signed_subscriptions: bool = False
    near_rpc_url: str = "https://rpc.mainnet.near.org"  # asked whether a public key belongs to an account
    rpc_timeout: float = Field(5.0, gt=0)  # seconds
    rpc_cache_seconds: float = Field(300.0, ge=0)  # how long a key's answer from the RPC is reused
    signature_recipient: str = "near-push-gateway"  # the NEP-413 recipient the frontend must sign for
    signature_max_age: float = Field(300.0, gt=0)  # seconds a signed message stays valid (and its nonce remembered)
    # seconds either side of the gateway's clock a /v1 request signature is accepted (each once)
    request_signature_max_age: float = Field(300.0, gt=0)
    allow_function_call_keys: bool = False  # accept signatures by function-call access keys, not only full access

    @field_validator("near_rpc_url")
    @classmethod
    def _rpc_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


class StorageSettings(_Section):
    url: str = "sqlite:///./data/gateway.db"
    busy_timeout: float = Field(30.0, gt=0)  # SQLite: seconds to wait for another process's lock
    connect_timeout: float = Field(10.0, gt=0)  # PostgreSQL: seconds for one connection attempt
    command_timeout: float = Field(60.0, gt=0)  # PostgreSQL: seconds one statement may take

    def open_options(self) -> dict[str, float]:
        """The keyword arguments of ``gateway.store.open_store`` besides the URL."""
        return {
            "busy_timeout": self.busy_timeout,
            "connect_timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
        }


class VapidSettings(_Section):
    private_key_file: str = "./data/vapid_private.pem"
    subject: str = PLACEHOLDER_SUBJECT

    @field_validator("subject")
    @classmethod
    def _subject_is_contact(cls, value: str) -> str:
        if not value.startswith(("mailto:", "https://")):
            raise ValueError("must start with mailto: or https:// (RFC 8292)")
        return value

    @property
    def subject_is_placeholder(self) -> bool:
        return self.subject == PLACEHOLDER_SUBJECT or self.subject.endswith(("@localhost", "example.com"))


Urgency = Literal["very-low", "low", "normal", "high"]
# "item": pushes about one post (one like burst, one thread of comments) replace each other;
# "type": every push of the type to the account replaces the last; "none": each push stays.
TopicMode = Literal["item", "type", "none"]


class TypeDelivery(_Section):
    """How pushes of one notification type are sent (``[push.types."<valueType>"]``); unset keys
    keep the built-in choice for the type (gateway/pacing/urgency.py) or ``[push]``'s."""

    ttl: int | None = Field(None, ge=1, le=28 * 86400)
    urgency: Urgency | None = None
    # What a push replaces (RFC 8030 Topic and the notification tag): an older one about the same
    # item ("item": the post liked), any older one of the type ("type"), or nothing ("none").
    topic: TopicMode = "item"
    # Seconds a burst is folded for: the first push goes at once, the rest of the window comes as
    # one digest replacing it ("alice.near and 4 others liked your post"). 0 = every push alone.
    digest: float = Field(0.0, ge=0, le=86400)  # at most a day (pacing/digest.py MAX_DIGEST_REACH)


DEFAULT_FAIR_RATE = 100.0


class PushSettings(_Section):
    allowed_endpoints: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_ENDPOINTS))
    # seconds a push service keeps an undelivered message: four weeks, as the NEAR server sends
    ttl: int = Field(2_419_200, ge=1, le=28 * 86400)
    urgency: Urgency = "normal"
    # per notification type (valueType): ttl and urgency instead of the ones above
    types: dict[str, TypeDelivery] = Field(default_factory=dict)
    request_timeout: float = Field(10.0, gt=0)  # seconds for one POST to a push service
    # Requests in flight. A push service answers in tens of ms across the internet, so throughput is
    # about concurrency ÷ round-trip time: 512 in flight at 40 ms allows ~12k pushes/s (bench/README.md).
    concurrency: int = Field(512, ge=1)  # all push services together
    concurrency_per_origin: int = Field(256, ge=1)  # to one push service
    # Processes that send (encryption is CPU work that threads do not spread): 0 = one per core. With
    # more than one, the worker role starts that many sending processes (gateway/senders.py).
    processes: int = Field(0, ge=0, le=256)
    # Seconds an idle connection to a push service is reused; below the usual server idle timeouts
    # (30-75 s), so a connection the far end has dropped is not written to.
    keep_alive: float = Field(15.0, gt=0)
    retry_initial_delay: float = Field(5.0, gt=0)  # seconds before the first retry
    retry_max_delay: float = Field(900.0, gt=0)  # backoff cap, seconds
    give_up_after: float = Field(86400.0, gt=0)  # a delivery still failing this long after the event is dead
    claim_lease: float = Field(60.0, gt=0)  # seconds a claimed delivery stays with its worker
    poll_interval: float = Field(1.0, gt=0)  # seconds between outbox polls when nothing wakes the worker
    retention_days: float = Field(7.0, gt=0)  # finished deliveries (dedupe window) and events kept
    # Deliveries per second one initiator's events are queued at before others' go first: a fan-out
    # to 100,000 followers cannot hold every slot while a lone alert waits (gateway/fairshare.py).
    fair_rate: float = Field(DEFAULT_FAIR_RATE, gt=0)

    @field_validator("allowed_endpoints")
    @classmethod
    def _prefixes_are_safe(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parse_prefix(prefix)
        return value

    @property
    def endpoint_prefixes(self) -> tuple[EndpointPrefix, ...]:
        return tuple(parse_prefix(p) for p in self.allowed_endpoints)


class IngestSettings(_Section):
    token: str = ""  # bearer token for POST /events; empty disables the route
    max_batch: int = Field(1000, ge=1)  # rows per POST /events


class MatchingSettings(_Section):
    allowed_value_types: list[str] = Field(default_factory=list)  # empty = every type
    max_per_endpoint_per_day: int = Field(15, ge=0)  # pushes per endpoint per UTC day; 0 = no cap


WATCHER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class WatcherSettingsBase(_Section):
    name: str  # unique; names the cursor, the logs and the metrics
    url: str
    enabled: bool = True
    reconnect_initial_delay: float = Field(1.0, gt=0)  # first reconnect/retry delay (then doubled, jittered)
    reconnect_max_delay: float = Field(60.0, gt=0)  # backoff cap

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not WATCHER_NAME.match(value):
            raise ValueError("must match [a-z0-9][a-z0-9._-]{0,63}")
        return value

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(cls._schemes()):
            raise ValueError(f"must start with {' or '.join(cls._schemes())}")
        return value

    @classmethod
    def _schemes(cls) -> tuple[str, ...]:
        return ("wss://", "ws://")


class _SocketWatcher(WatcherSettingsBase):
    read_timeout: float = Field(60.0, gt=0)  # no frame for this long: the connection is dead, reconnect
    ping_interval: float = Field(20.0, gt=0)  # WebSocket ping period (a pong must come within read_timeout)


class QueryApiWatcherSettings(_SocketWatcher):
    """The QueryAPI (Hasura) GraphQL subscription, subprotocol graphql-ws."""

    kind: Literal["queryapi"]
    role: str = "dataplatform_near"  # x-hasura-role
    table: str = "dataplatform_near_notifications_notifications_stream"
    fields: list[str] = Field(default_factory=lambda: list(NEAR_ROW_FIELDS))
    start_block_height: int = Field(0, ge=0)  # where to start when no cursor is stored yet
    batch_size: int = Field(100, ge=1, le=1000)

    @field_validator("fields")
    @classmethod
    def _fields_have_the_essentials(cls, value: list[str]) -> list[str]:
        missing = {"id", "blockHeight", "receiver", "valueType"} - set(value)
        if missing:
            raise ValueError(f"must include {sorted(missing)}")
        if not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", f) for f in value):
            raise ValueError("field names must be GraphQL identifiers")
        return value


class NearActionsWatcherSettings(_SocketWatcher):
    """The actions WebSocket (wss://actions.near.stream/ws): SocialDB set calls with index.notify."""

    kind: Literal["near-actions"]
    contract: str = "social.near"  # the SocialDB contract whose set calls carry notifications
    fetch_past_actions: int = Field(100, ge=0, le=1000)  # replayed on every (re)connect; duplicates are skipped
    secret: str = "gateway"  # noqa: S105 (not a credential: the actions server echoes it back)


class SocialIndexWatcherSettings(WatcherSettingsBase):
    """Polls api.near.social POST /index (action: notify) for every account that has a stream."""

    kind: Literal["social-index"]
    interval: float = Field(10.0, gt=0)  # seconds between polls of one account
    concurrency: int = Field(4, ge=1)  # requests in flight
    limit: int = Field(100, ge=1, le=1000)  # entries per request
    request_timeout: float = Field(10.0, gt=0)

    @classmethod
    def _schemes(cls) -> tuple[str, ...]:
        return ("https://", "http://")


class FieldMapping(_Section):
    """Where each event field is in a generic feed's row: dot paths; "" when the feed has none."""

    id: str = "id"
    receiver: str = "receiver"
    initiator: str = "initiatedBy"
    type: str = "valueType"
    block_height: str = "blockHeight"
    item_path: str = "path"


class WebsocketJsonWatcherSettings(_SocketWatcher):
    """Any WebSocket that sends JSON frames with rows in them."""

    kind: Literal["websocket-json"]
    # Sent after connecting (JSON). Any string "{cursor}" in it is replaced by the stored cursor (or start_cursor).
    subscribe: dict[str, Any] | list[Any] | None = None
    start_cursor: str = "0"
    rows: str = ""  # dot path to the row list in a frame; "" = the frame is a row or a list of rows
    mapping: FieldMapping = FieldMapping()


class HttpPollJsonWatcherSettings(WatcherSettingsBase):
    """Any HTTP endpoint answering JSON pages of rows; "{cursor}" in url or body is the stored cursor."""

    kind: Literal["http-poll-json"]
    method: Literal["GET", "POST"] = "GET"
    body: dict[str, Any] | None = None  # JSON body for POST
    start_cursor: str = "0"
    interval: float = Field(5.0, gt=0)  # seconds between polls
    request_timeout: float = Field(10.0, gt=0)
    rows: str = ""
    mapping: FieldMapping = FieldMapping()

    @classmethod
    def _schemes(cls) -> tuple[str, ...]:
        return ("https://", "http://")


MIB = 1024 * KIB
NEARDATA_MAINNET = "https://mainnet.neardata.xyz"
NEAR_RPC_MAINNET = "https://rpc.mainnet.near.org"


class ChainEventSettings(_Section):
    """A NEP-297 event of any contract, turned into a notification type without code."""

    standard: str  # the event's "standard", e.g. "nep245"
    event: str  # its "event", e.g. "mt_transfer"
    receiver_field: str  # the field of each `data` entry that names the account to notify, e.g. "new_owner_id"
    initiator_field: str = ""  # the field naming who caused it; "" = the receipt's predecessor
    value_type: str = ""  # the notification's valueType; "" = the event name
    contract: str = ""  # only events emitted by this contract; "" = any contract

    @property
    def type_name(self) -> str:
        return self.value_type or self.event


class NeardataWatcherSettings(WatcherSettingsBase):
    """Follows the NEAR chain block by block through a neardata API (FASTNEAR, NEAR Lake shape)."""

    kind: Literal["neardata"]
    url: str = NEARDATA_MAINNET
    finality: Literal["final", "optimistic"] = "final"  # /v0/block or /v0/block_opt
    start_block_height: int = Field(0, ge=0)  # with no stored cursor; 0 = the newest final block
    concurrency: int = Field(4, ge=1, le=64)  # blocks fetched at once while behind (committed in height order)
    api_key: str = ""  # optional; sent as a Bearer header (to the configured host and its subdomains only)
    # Seconds for one block request; a height just past the tip is held open by the server ~1 s per block.
    request_timeout: float = Field(30.0, gt=0)
    max_block_bytes: int = Field(32 * MIB, ge=64 * KIB)  # a bigger block is a counted, logged fault
    accounts_refresh: float = Field(2.0, gt=0)  # seconds between reads of the accounts whose streams changed
    rpc_url: str = NEAR_RPC_MAINNET  # NEAR RPC asked for ft_metadata (token decimals and symbol), cached
    social_contract: str = "social.near"  # whose `set` calls carry index.notify (social notifications)
    events: list[ChainEventSettings] = Field(default_factory=list)  # more NEP-297 events as notification types

    @classmethod
    def _schemes(cls) -> tuple[str, ...]:
        return ("https://", "http://")

    @field_validator("rpc_url")
    @classmethod
    def _rpc_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value


WatcherSettings = Annotated[
    NeardataWatcherSettings
    | QueryApiWatcherSettings
    | NearActionsWatcherSettings
    | SocialIndexWatcherSettings
    | WebsocketJsonWatcherSettings
    | HttpPollJsonWatcherSettings,
    Field(discriminator="kind"),
]


def default_watchers() -> list[WatcherSettings]:
    """The embedded default: NEAR mainnet through neardata, for the accounts that have streams."""
    return [NeardataWatcherSettings(kind="neardata", name="neardata")]


class GatewaySettings(_Section):
    """A frontend that registers streams: where clicks on its notifications go."""

    origin: str  # e.g. "https://my-frontend.example"; streams whose gateway has this origin use these links
    # value type -> URL template; placeholders are the row's fields ({receiver}, {initiatedBy}, {blockHeight},
    # {actionAtBlockHeight}, {path}, {devhubPostId}, {id}, {valueType}, ...) and {gateway}. A template
    # whose placeholder has no value in the row is skipped.
    links: dict[str, str] = Field(default_factory=dict)
    default_link: str = ""  # template when no per-type link fits; "" = the gateway's own URL
    key: str = ""  # API key this frontend sends as X-Gateway-Key; set, it is required for streams of this origin

    @field_validator("origin")
    @classmethod
    def _origin_is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("links")
    @classmethod
    def _links_are_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for kind, template in value.items():
            if not template.startswith(("https://", "http://", "{gateway}")):
                raise ValueError(f"links.{kind} must start with https://, http:// or {{gateway}}")
        return value


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "kv", "json"] = "text"  # text for people, kv (key=value) or json for log pipelines


class ExplorerSettings(_Section):
    """Where a click on an on-chain activity notification goes when its gateway has no link for the type."""

    transaction: str = "https://nearblocks.io/txns/{txHash}"  # placeholders: the row's fields, as in links
    account: str = "https://nearblocks.io/address/{receiver}"  # when the row has no txHash

    @field_validator("transaction", "account")
    @classmethod
    def _is_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL template")
        return value


class MetricsSettings(_Section):
    # Seconds between asks for the chain head (NEAR RPC at [security] near_rpc_url), for each NEAR
    # watcher's lag in blocks; 0 = never ask.
    chain_head_interval: float = Field(15.0, ge=0)


class AdminSettings(_Section):
    token: str = ""  # bearer token for /admin (dashboard) and /admin/api; empty disables them


class InboxSettings(_Section):
    days: float = Field(30.0, gt=0)  # notifications kept in each account's inbox (read or not)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid", frozen=True)

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    vapid: VapidSettings = VapidSettings()
    push: PushSettings = PushSettings()
    ingest: IngestSettings = IngestSettings()
    matching: MatchingSettings = MatchingSettings()
    logging: LoggingSettings = LoggingSettings()
    admin: AdminSettings = AdminSettings()
    metrics: MetricsSettings = MetricsSettings()
    limits: LimitsSettings = LimitsSettings()
    security: SecuritySettings = SecuritySettings()
    explorer: ExplorerSettings = ExplorerSettings()
    inbox: InboxSettings = InboxSettings()
    # No [[watchers]] in the file: follow NEAR mainnet through neardata (default_watchers()).
    # `watchers = []` runs none.
    watchers: list[WatcherSettings] = Field(default_factory=default_watchers)
    gateways: list[GatewaySettings] = Field(default_factory=list)

    @property
    def link_templates(self) -> dict[str, dict[str, str]]:
        """Gateway origin -> {value type or "default": template}, as gateway.links wants it."""
        from gateway.links import gateway_origin

        out: dict[str, dict[str, str]] = {}
        for g in self.gateways:
            templates = dict(g.links)
            if g.default_link:
                templates["default"] = g.default_link
            out[gateway_origin(g.origin)] = templates
        return out

    @model_validator(mode="after")
    def _watcher_names_unique(self) -> Settings:
        names = [w.name for w in self.watchers]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"watcher names must be unique: {duplicated}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first (wins), then the TOML values passed in as init arguments.
        return (env_settings, init_settings)


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        lines.append(f"{path}: {err['msg']}")
    return "; ".join(lines)


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from an optional TOML file, the environment and explicit overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_format_error(exc)}") from exc

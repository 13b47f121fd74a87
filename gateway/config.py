"""The settings tree: defaults < TOML file < ``GATEWAY_*`` environment variables.

Every key here is documented, with its default, in config.example.toml (a test checks it).
Environment variables name the path with double underscores: ``GATEWAY_SERVER__PORT=9000``,
``GATEWAY_PUSH__ALLOWED_ENDPOINTS='["https://fcm.googleapis.com/"]'`` (lists as JSON).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.endpoints import DEFAULT_ALLOWED_ENDPOINTS, EndpointPrefix, parse_prefix
from gateway.exceptions import ConfigError

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


class StorageSettings(_Section):
    url: str = "sqlite:///./data/gateway.db"


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


class PushSettings(_Section):
    allowed_endpoints: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_ENDPOINTS))
    ttl: int = Field(86400, ge=1, le=28 * 86400)  # seconds a push service keeps an undelivered message
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"
    request_timeout: float = Field(10.0, gt=0)  # seconds for one POST to a push service
    concurrency: int = Field(128, ge=1)  # requests in flight, all push services together
    concurrency_per_origin: int = Field(64, ge=1)  # requests in flight to one push service
    retry_initial_delay: float = Field(5.0, gt=0)  # seconds before the first retry
    retry_max_delay: float = Field(900.0, gt=0)  # backoff cap, seconds
    give_up_after: float = Field(86400.0, gt=0)  # a delivery still failing this long after the event is dead
    claim_lease: float = Field(60.0, gt=0)  # seconds a claimed delivery stays with its worker
    poll_interval: float = Field(1.0, gt=0)  # seconds between outbox polls when nothing wakes the worker
    retention_days: float = Field(7.0, gt=0)  # finished deliveries (dedupe window) and events kept

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


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", extra="forbid", frozen=True)

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    vapid: VapidSettings = VapidSettings()
    push: PushSettings = PushSettings()
    ingest: IngestSettings = IngestSettings()
    matching: MatchingSettings = MatchingSettings()
    logging: LoggingSettings = LoggingSettings()

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
        data.setdefault(section, {}).update(values)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_format_error(exc)}") from exc

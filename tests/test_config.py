from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import (
    GatewaySettings,
    HttpPollJsonWatcherSettings,
    NearActionsWatcherSettings,
    NeardataWatcherSettings,
    QueryApiWatcherSettings,
    Settings,
    SocialIndexWatcherSettings,
    WebsocketJsonWatcherSettings,
    load_settings,
)
from gateway.exceptions import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_public_contract() -> None:
    s = load_settings()
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8000)
    assert s.storage.url == "sqlite:///./data/gateway.db"
    assert s.vapid.private_key_file == "./data/vapid_private.pem"
    assert s.vapid.subject_is_placeholder
    assert s.ingest.token == ""
    assert s.matching.allowed_value_types == [] and s.matching.max_per_endpoint_per_day == 15
    assert len(s.push.allowed_endpoints) == 4


def test_toml_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nhost = "0.0.0.0"\nport = 8100\n[matching]\nallowed_value_types = ["like"]\n')
    assert load_settings(cfg).server.port == 8100
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9000")
    monkeypatch.setenv("GATEWAY_MATCHING__ALLOWED_VALUE_TYPES", '["comment"]')
    s = load_settings(cfg)
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9000)  # the file's host survives
    assert s.matching.allowed_value_types == ["comment"]


@pytest.mark.parametrize(
    ("toml", "where"),
    [
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[server]\nprot = 80\n", "server.prot"),
        ('[push]\nallowed_endpoints = ["http://evil.example/"]\n', "push.allowed_endpoints"),
        ('[push]\nallowed_endpoints = ["ftp://x/"]\n', "push.allowed_endpoints"),
        ('[push]\nurgency = "urgent"\n', "push.urgency"),
        ('[vapid]\nsubject = "ops@example.org"\n', "vapid.subject"),
        ("[server\n", "invalid TOML"),
    ],
)
def test_bad_settings_say_which_key_is_wrong(tmp_path: Path, toml: str, where: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_settings(cfg)


def test_loopback_http_prefix_is_allowed_when_listed() -> None:
    s = load_settings(None, {"push": {"allowed_endpoints": ["http://127.0.0.1:8080/"]}})
    assert s.push.endpoint_prefixes[0].scheme == "http"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_setting_is_documented_in_config_example_with_its_default() -> None:
    example: dict[str, Any] = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Settings().model_dump()
    for dotted in _keys(Settings):
        if dotted in ("watchers", "gateways"):
            continue
        section, key = dotted.split(".")
        assert key in example.get(section, {}), f"{dotted} missing from config.example.toml"
        assert example[section][key] == defaults[section][key], f"{dotted}: example differs from the default"
    # and the example holds nothing the code does not know
    loaded = load_settings(ROOT / "config.example.toml")
    enabled = [w for w in loaded.watchers if w.enabled]
    assert loaded.model_copy(update={"watchers": enabled, "gateways": []}) == Settings()
    assert len(loaded.gateways) == 1
    assert set(GatewaySettings.model_fields) <= set(example["gateways"][0])
    assert loaded.link_templates["https://my-frontend.example"]["default"] == "{gateway}/notifications"


WATCHER_KINDS = {
    "neardata": NeardataWatcherSettings,
    "queryapi": QueryApiWatcherSettings,
    "near-actions": NearActionsWatcherSettings,
    "social-index": SocialIndexWatcherSettings,
    "websocket-json": WebsocketJsonWatcherSettings,
    "http-poll-json": HttpPollJsonWatcherSettings,
}


def test_every_watcher_kind_is_documented_with_every_key_at_its_default() -> None:
    example: dict[str, Any] = tomllib.loads((ROOT / "config.example.toml").read_text())
    by_kind = {w["kind"]: w for w in example["watchers"]}
    assert set(by_kind) == set(WATCHER_KINDS)
    for kind, model in WATCHER_KINDS.items():
        documented = by_kind[kind]
        for key, field in model.model_fields.items():
            assert key in documented, f"{kind}.{key} missing from config.example.toml"
            if key in ("name", "kind", "url", "enabled", "subscribe", "body"):
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump()
            assert documented[key] == default, f"{kind}.{key}: example differs from the default"
    enabled = [w for w in load_settings(ROOT / "config.example.toml").watchers if w.enabled]
    assert enabled == Settings().watchers  # the embedded default, and nothing else


def test_the_embedded_default_follows_mainnet_through_neardata_and_an_empty_list_runs_none(tmp_path: Path) -> None:
    (default,) = load_settings().watchers
    assert isinstance(default, NeardataWatcherSettings)
    assert (default.name, default.url, default.finality) == ("neardata", "https://mainnet.neardata.xyz", "final")
    assert default.start_block_height == 0  # the newest block: no flood of history
    cfg = tmp_path / "c.toml"
    cfg.write_text("watchers = []\n")
    assert load_settings(cfg).watchers == []


def test_every_route_and_command_is_in_the_readme() -> None:
    from gateway.app import create_app
    from gateway.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    app = create_app(load_settings(), store=None, vapid_public_key="unused")  # type: ignore[arg-type]
    routes = [
        (method, path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method in ("get", "post", "delete", "put")
    ]
    assert len(routes) >= 14
    for method, path in [*routes, ("get", "/admin")]:
        assert f"{method.upper()} {path}" in readme, f"{method.upper()} {path}"
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        action = next((a for a in sub._actions if a.dest == "action"), None)
        for choice in action.choices if action is not None and action.choices else [""]:
            command = f"gateway {name} {choice}".strip()
            assert f"`{command}" in readme, command


def test_every_metric_is_in_the_readme() -> None:
    from prometheus_client.core import CounterMetricFamily

    from gateway.metrics import Metrics

    readme = (ROOT / "README.md").read_text()
    families = list(Metrics().registry.collect())
    assert len(families) >= 13
    for family in families:
        name = (
            f"{family.name}_total"
            if isinstance(family, CounterMetricFamily) or family.type == "counter"
            else family.name
        )
        assert f"`{name}`" in readme, name

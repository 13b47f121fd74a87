from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli import main
from gateway.exceptions import VapidKeyError
from gateway.webpush import public_key_b64, read_key_file
from tests.conftest import RunningGateway


def test_vapid_generate_then_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "k.pem"
    monkeypatch.setenv("GATEWAY_VAPID__PRIVATE_KEY_FILE", str(key_file))
    assert main(["vapid", "generate"]) == 0
    generated = capsys.readouterr().out.strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert main(["vapid", "show"]) == 0
    assert capsys.readouterr().out.strip() == generated
    assert main(["vapid", "generate"]) == 1  # never overwrites a key browsers depend on
    assert public_key_b64(read_key_file(key_file)) == generated


def test_raw_base64url_private_key_is_accepted(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    path = tmp_path / "raw.key"
    path.write_text(base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "\n")
    assert public_key_b64(read_key_file(path)) == public_key_b64(key)


def test_unreadable_key_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("not a key")
    with pytest.raises(VapidKeyError, match="not a P-256 private key"):
        read_key_file(path)
    monkeypatch.setenv("GATEWAY_VAPID__PRIVATE_KEY_FILE", str(path))
    assert main(["vapid", "show"]) == 2
    assert "not a P-256 private key" in capsys.readouterr().err


def test_bad_config_file_exits_with_the_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[push]\nallowed_endpoints = ['http://10.0.0.1/']\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "push.allowed_endpoints" in capsys.readouterr().err


def test_web_client_is_served(gateway: RunningGateway) -> None:
    page = gateway.http.get("/")
    assert page.status_code == 200 and "main.js" in page.text
    for asset in ("/main.js", "/sw.js"):
        r = gateway.http.get(asset)
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert gateway.http.get("/index.html").text == page.text
    assert gateway.http.get("/sw.js", params={"path": "/etc/passwd"}).text == r.text  # no file name from a client
    assert gateway.http.get("/../pyproject.toml").status_code == 404
    wrong_method = gateway.http.put("/subscriptions/create")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    admin_streams = gateway.http.put("/admin/api/streams")
    assert admin_streams.status_code == 405 and admin_streams.headers["allow"] == "DELETE, GET"

"""The web client as a package a frontend installs: its declarations compile against a typed
consumer (tsc --noEmit), its pure parts pass Node's test runner, and its request signing agrees with
the gateway's own (two implementations, one vector)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.v1.signing import sign

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "webclient"
NODE = shutil.which("node")
TSC = CHECKS / "node_modules" / ".bin" / "tsc"
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node (scripts/test installs it with the browser tests)")


def test_the_package_names_its_module_types_and_worker() -> None:
    package = json.loads((ROOT / "webclient" / "package.json").read_text())
    assert package["type"] == "module" and package["types"] == "./main.d.ts"
    for target in ("./main.js", "./main.d.ts", "./sw.js", "./signing.js"):
        assert (ROOT / "webclient" / target).is_file(), target
    declared = (ROOT / "webclient" / "main.d.ts").read_text()
    module = (ROOT / "webclient" / "main.js").read_text()
    for name in ("subscribe", "unsubscribe", "setMuted", "inbox", "markRead", "status", "supported"):
        assert f"export function {name}(" in declared, name
        assert f"export function {name}(" in module or f"export async function {name}(" in module, name


@pytest.mark.skipif(
    not TSC.exists(), reason="typescript is not installed: scripts/test runs npm install in tests/webclient"
)
def test_the_declarations_compile_against_a_typed_consumer() -> None:
    done = subprocess.run([str(TSC), "-p", str(CHECKS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_pure_parts_pass_nodes_test_runner() -> None:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "--test", str(CHECKS / "signing.test.mjs")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# pass 3" in done.stdout


def test_the_browsers_signature_is_the_gateways() -> None:
    assert NODE is not None
    script = """
    await import(process.argv[1]);
    const h = await globalThis.NearPushSigning.signedHeaders({auth: "_WaWEIbW1xnIE4LSaho9uw",
      endpoint: "https://fcm.googleapis.com/fcm/send/x", method: "POST", target: "/v1/receipts?x=1",
      body: '{"stage":"shown"}', now: 1800000000500, nonce: "abcdefghijklmnop"});
    console.log(JSON.stringify(h));
    """
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script, (ROOT / "webclient" / "signing.js").as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    headers = json.loads(done.stdout)
    endpoint = "https://fcm.googleapis.com/fcm/send/x"
    body = b'{"stage":"shown"}'
    expected = sign(
        "_WaWEIbW1xnIE4LSaho9uw", "POST", "/v1/receipts?x=1", endpoint, "1800000000", "abcdefghijklmnop", body
    )
    assert headers["X-Push-Signature"] == expected and headers["X-Push-Time"] == "1800000000"

"""Property-based API testing with schemathesis against the served OpenAPI document.

Every operation gets generated requests, valid and invalid, over real HTTP to a running gateway:
no answer may be a 5xx, and every answer must match what the document says for its status (every
4xx is the documented error shape with a stable ``code``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.app import create_app
from gateway.config import load_settings
from tests.conftest import INGEST_TOKEN, RunningGateway

EXAMPLES_PER_OPERATION = 100


def served_schema() -> dict[str, Any]:
    """The OpenAPI document exactly as the gateway serves it (GET /openapi.json); the tests below
    also check that the running gateway serves this same document."""
    app = create_app(load_settings(), store=None, vapid_public_key="unused")  # type: ignore[arg-type]
    return app.openapi()


schema = schemathesis.openapi.from_dict(served_schema())
# Invalid data may also be refused for its size (413 body_too_large) or slowness (408): both are rejections.
schema.config.checks.negative_data_rejection.expected_statuses += ["408", "413"]


@pytest.fixture
def api(start_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    gw = start_gateway(limits={"per_ip_rate": 0, "per_origin_rate": 0})
    assert gw.http.get("/openapi.json").json() == served_schema()
    return gw


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented(case: schemathesis.Case, api: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}"} if case.path == "/events" else None
    response = case.call(base_url=api.url, headers=headers)
    assert response.status_code < 500, response.text
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"statusCode", "error", "code", "message"}, body
        assert body["statusCode"] == response.status_code and body["code"], body
    # Schema-valid data may still be refused: a P-256 point or the endpoint allow-list is beyond JSON Schema.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])

"""Property-based run of the OpenAPI document (schemathesis 4, pinned in the test extra) against the
real server over HTTP: for inputs generated from the schema (valid and invalid), no response is a
5xx and every response matches the status codes, content types and body schemas the document
declares (the checks not_a_server_error, status_code_conformance, content_type_conformance and
response_schema_conformance).

Bounded: a few dozen examples per operation, no shrinking beyond Hypothesis' defaults, so the
whole run stays within the API tests' time budget.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bookrec.api.main import create_app
from bookrec.config import Settings
from tests.support.live_server import LiveServer
from tests.support.publish import publish_fixture

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis')}/bookrec.sqlite3"
    publish_fixture(url, n_users=50, n_books=40, seed=9)
    # No rate limits: the run sends every operation dozens of times from one address, and a 429
    # (documented, so conformant) would only hide what the operation answers.
    with LiveServer(url, rate_limit_cold_start_per_minute=0, rate_limit_search_per_minute=0) as server:
        yield server


# The document is the app's own (building it needs no store); the cases are sent to the live server.
# Cold start answers a well-formed request whose books are all unknown with a documented 400
# (nothing to fold in): for that operation alone, 400 counts as an accepted valid request.
CONFIG = SchemathesisConfig.from_dict(
    {
        "operations": [
            {
                "include-path": "/recommend/cold-start",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400"]}},
            }
        ]
    }
)
schema = schemathesis.openapi.from_dict(
    create_app(Settings(store_url="sqlite:///unused.sqlite3")).openapi(), config=CONFIG
)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_document_holds(case, api_server):
    response = case.call_and_validate(base_url=api_server.url, checks=CHECKS)
    assert response.status_code < 500

"""Property-based run of the OpenAPI document (schemathesis 4) against the real server over HTTP:
for inputs generated from the schema (valid and invalid), no response is a 5xx and every response
matches the status codes, content types, headers and body schemas the document declares.

Bounded: a few dozen examples per operation, no shrinking beyond Hypothesis' defaults, so the
whole run stays within the API tests' time budget.
"""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, settings

from bookrec.api.main import create_app
from bookrec.config import Settings
from tests.support.live_server import LiveServer
from tests.support.publish import publish_fixture

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('schemathesis')}/bookrec.sqlite3"
    publish_fixture(url, n_users=50, n_books=40, seed=9)
    with LiveServer(url) as server:
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
    response = case.call_and_validate(base_url=api_server.url)
    assert response.status_code < 500

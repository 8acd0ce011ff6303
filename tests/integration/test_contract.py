"""The API contract: the OpenAPI document is valid and is what the server does. A schema fuzz
(schemathesis) sends generated requests, valid and invalid, to every route of a running app
(Chorus's real serving graph; the fake engine so that hundreds of cases run in a minute), and
fails on any server error (500-502; 503 and 504 are declared answers to load and deadlines,
each with its envelope), any schema-valid request not answered 2xx, and any status, content
type, header or body the document does not declare. The manual's API page (docs/api.md) is
checked against the same document."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fakes import FakeEngine
from tests.integration.conftest import fake_app

pytestmark = pytest.mark.timeout(600)

CASES = 150  # most per route and generation mode (routes without inputs need 1)
FUZZED = ("POST /v1/audio/speech", "GET /v1/models/{model_id}")  # the routes with inputs
API = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# The fuzz must not be throttled or refused for load: these are checked elsewhere.
ARGS = {"max_backlog_s": 10_000, "request_timeout_s": 600}


@pytest.fixture(scope="module")
def fuzz_url(server: str) -> Iterator[str]:
    with fake_app(server, "fuzz", ARGS, engine=(FakeEngine, {"poison": None})) as url:
        yield url


CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_declared_answers(fuzz_url: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    seen: defaultdict[str, Counter[int]] = defaultdict(Counter)
    for operation in operations:

        @given(operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=CASES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case) -> None:
            response = case.call(base_url=fuzz_url, timeout=120)
            seen[case.operation.label][response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
            answer = response.content[:300].decode("utf-8", "replace")
            what = f"{case.body!r:.300} -> {response.status_code} {answer}"
            assert response.status_code not in (500, 501, 502), what
            if mode.is_positive:
                assert 200 <= response.status_code < 300 or met_its_deadline(case, response), (
                    f"schema-valid request refused: {what}"
                )

        try:
            call()
        except Unsatisfiable:  # no inputs, so nothing invalid to send
            assert mode is GenerationMode.NEGATIVE and operation.label not in FUZZED
    print({label: dict(counts) for label, counts in seen.items()})
    assert all(sum(seen[label].values()) >= 3 for label in FUZZED), seen
    assert sum(sum(c.values()) for c in seen.values()) >= 100


def met_its_deadline(case, response) -> bool:
    """A request that set a deadline may be answered 503 `deadline_unmeetable` or 504: its
    deadline, not its validity, is what the server could not meet."""
    if not isinstance(case.body, dict) or case.body.get("deadline_s") is None:
        return False
    code = response.json()["error"]["code"] if response.status_code in (503, 504) else None
    return code in ("deadline_unmeetable", "deadline_exceeded")


def test_the_document_resolves_and_states_what_the_server_accepts(fuzz_url: str) -> None:
    doc = httpx.get(f"{fuzz_url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs and refs <= set(schemas)
    assert "$defs" not in str(doc)
    body = schemas["SpeechRequest"]["properties"]
    assert set(body["model"]["enum"]) == {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chorus-piper"}
    assert {"alloy", "en_US-joe-medium"} <= set(body["voice"]["enum"])
    assert body["response_format"]["enum"] == ["mp3", "opus", "aac", "flac", "wav", "pcm"]
    ready = doc["paths"]["/readyz"]["get"]["responses"]
    assert set(ready) == {"200", "503"} and "Retry-After" in ready["503"]["headers"]
    for path in doc["paths"].values():
        for operation in path.values():
            assert "422" not in operation["responses"]  # bad input is a 400 envelope


def test_the_api_page_lists_every_route_and_field_of_the_document(
    fuzz_url: str,
) -> None:
    doc = httpx.get(f"{fuzz_url}/openapi.json", timeout=30).json()
    api = API.read_text()
    routes = {f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops}
    listed = set(re.findall(r"`((?:GET|POST) /[^`\s]*)`", api))
    assert routes <= listed, sorted(routes - listed)
    assert listed - routes <= {"GET /", "GET /docs", "GET /openapi.json"}, listed - routes
    fields = set(doc["components"]["schemas"]["SpeechRequest"]["properties"])
    documented = set(re.findall(r"^\| `(\w+)` \|", api, flags=re.M))
    assert fields <= documented, sorted(fields - documented)

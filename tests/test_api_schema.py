"""The admin API against its own OpenAPI document: schemathesis generates requests for
every operation (valid and invalid ones) and sends them to the app in process (ASGI, no
network), in front of a real hub with a real Mosquitto.

With an admin key no request may get a 5xx; without a key every protected operation must
answer 401, and the public ones (``/health``, ``/enrol``) no 5xx either.

Model building is stubbed on this hub: ``POST /models/train`` and ``/models/{name}/upload``
run their whole request path (validation, auth, audit, job creation) but the job returns at
once, so the run does not train hundreds of models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.generation.modes import GenerationMode

from hub import Hub, HubConfig, create_app
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXAMPLES = 40  # per operation and run, positive and negative: the module runs in < 60 s

RUN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run: a failure reproduces
    database=None,
)


def stub_build(*_args: Any, **kwargs: Any) -> dict[str, Any]:
    """Stands in for Hub.build_and_publish: no training, no import."""
    return {"stub": True, "uploaded": kwargs.get("onnx_bytes") is not None}


@pytest.fixture(scope="module")
def hub(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data: Path = tmp_path_factory.mktemp("schema") / "hub"
    h = Hub(
        HubConfig(data_dir=data, broker_url=mosquitto.address.url, client_id="hub-schema")
    ).start()
    h.build_and_publish = stub_build  # type: ignore[method-assign]
    yield h
    h.stop()


@pytest.fixture(scope="module")
def admin_key(hub: Hub) -> str:
    return ApiKeys(hub.engine).create("schemathesis", Role.admin, "test").key


@pytest.fixture(scope="module")
def api_schema(hub: Hub) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(hub))


def for_each_operation(api_schema: Any, check: Callable[[Any], None]) -> list[str]:
    """Run ``check`` on generated cases of every operation; what failed, one line each.

    (A loop rather than schemathesis' pytest plugin: its lazy fixture-based schemas do not
    run under pytest 9.2.)
    """
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20, "the OpenAPI document lost operations"
    for op in operations:
        cases = st.one_of(
            op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)
        )

        @RUN
        @given(case=cases)
        def run(case: Any) -> None:
            check(case)

        try:
            run()
        except Exception as e:  # hypothesis re-raises the shrunk failing example's error
            failures.append(f"{op.label}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return failures


def is_public(case: Any) -> bool:
    """The operation declares no security requirement in the OpenAPI document."""
    return not case.operation.definition.raw.get("security")


def test_no_server_error_with_an_admin_key(api_schema: Any, admin_key: str) -> None:
    def check(case: Any) -> None:
        case.call_and_validate(
            headers={"authorization": f"Bearer {admin_key}"}, checks=[not_a_server_error]
        )

    failures = for_each_operation(api_schema, check)
    assert not failures, "\n".join(failures)


def test_without_a_key_only_401(api_schema: Any) -> None:
    def check(case: Any) -> None:
        headers = case.headers or {}
        case.headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        response = case.call()
        what = f"{case.method} {case.formatted_path}: {response.status_code}"
        if is_public(case):
            assert response.status_code < 500, what
        else:
            assert response.status_code == 401, what
            assert response.headers.get("www-authenticate") == ["Bearer"], what

    failures = for_each_operation(api_schema, check)
    assert not failures, "\n".join(failures)


# Requests that once got a 500 (found by schemathesis, or by reading the code after it),
# and one that started a job sized to exhaust the hub's memory: now each gets a 422.
FOUND: list[tuple[str, str, dict[str, Any]]] = [
    ("/models/train", "POST", {"hidden": [0]}),  # 500: the pipeline's own check raised
    ("/deployments", "POST", {"model": "m", "version": 2**64}),  # 500: SQLite INTEGER overflow
    ("/models/train", "POST", {"hidden": [2**40]}),  # a job with a 2**40-wide layer
]


@pytest.mark.parametrize(("path", "method", "body"), FOUND)
def test_requests_that_once_got_a_500_get_a_422(
    api_schema: Any, admin_key: str, path: str, method: str, body: dict[str, Any]
) -> None:
    case = api_schema[path][method].Case(body=body)
    response = case.call(headers={"authorization": f"Bearer {admin_key}"})
    assert response.status_code == 422, response.text


def test_a_nul_character_is_refused_or_not_found_never_a_500(
    api_schema: Any, admin_key: str
) -> None:
    """PostgreSQL refuses NUL in text (to store or to search): a 422 that says so, where
    SQLite finds nothing (404). Found by schemathesis on the PostgreSQL run."""
    auth = {"authorization": f"Bearer {admin_key}"}
    create = api_schema["/rollouts"]["POST"].Case(body={"model": "m\x00"}).call(headers=auth)
    lookup = api_schema["/rollouts/{rollout_id}"]["GET"].Case(
        path_parameters={"rollout_id": "r\x00"}
    )
    found = lookup.call(headers=auth)
    for response in (create, found):
        assert response.status_code in (404, 422), response.text
        if response.status_code == 422:
            assert "cannot store or search for" in response.json()["detail"]
            assert "NUL" in response.json()["detail"]


@schemathesis.check
def answer_conforms(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 2xx answer is what its route's response model says (the refusals' shapes are
    hub/api/errors.py's, checked by their own tests)."""
    if response.status_code >= 300:
        return None
    return response_schema_conformance(ctx, response, case)


def test_answers_match_their_response_models(api_schema: Any, admin_key: str) -> None:
    """Every 2xx answer validates against the route's response model in the OpenAPI
    document (hub/api/views/): the document, the route and the Python client agree."""

    def check(case: Any) -> None:
        case.call_and_validate(
            headers={"authorization": f"Bearer {admin_key}"},
            checks=[not_a_server_error, answer_conforms],
        )

    failures = for_each_operation(api_schema, check)
    assert not failures, "\n".join(failures)

"""Fuzz of the management API from its own OpenAPI schema (schemathesis), authenticated and bounded.

Every operation gets a fixed number of generated cases (deterministic: derandomized), sent with an
admin token to the caller's real project. Whatever the input: never a 5xx, and every 4xx is a
platform error with a code and a request id.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from tests.security.conftest import World

pytestmark = pytest.mark.slow

CASES_PER_OPERATION = 5  # about 36 operations: ~180 cases, well under a minute


def test_management_api_fuzz(world: World) -> None:
    schema = schemathesis.openapi.from_url(f"{world.url}/openapi.json")
    # A platform administrator of its own, admin of project A: every route is reachable, and what the
    # fuzzer makes (AK/SK pairs, apps) goes away with it.
    admin = world.admin()
    fuzzer = admin.create_user("fuzzer", "fuzzer password 1", is_admin=True)
    admin.add_member(world.project_a, fuzzer["id"], "admin")
    token = world.token("fuzzer", world.project_a, "fuzzer password 1")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    seen: dict[int, int] = {}

    def check(case) -> None:  # type: ignore[no-untyped-def]
        if "project_id" in (case.path_parameters or {}):
            case.path_parameters["project_id"] = world.project_a  # reach the handlers, not only the auth check
        resp = case.call(base_url=world.url, headers={"X-Auth-Token": token}, timeout=30)
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        where = f"{case.method} {case.formatted_path}: {resp.status_code} {resp.text[:300]}"
        assert resp.status_code < 500, where
        if resp.status_code >= 400:
            body = resp.json()
            assert body.get("error_code") and body.get("error_msg") and body.get("request_id"), where

    try:
        for operation in operations:
            _fuzz(operation, check)
    finally:
        for app in admin.list_apps():
            if app["owner"] == "fuzzer":
                admin.delete_app(app["app_id"])
        admin.delete_user(fuzzer["id"])
    print(f"fuzz: {sum(seen.values())} cases over {len(operations)} operations; statuses {sorted(seen.items())}")
    assert sum(seen.values()) >= 100, seen


def _fuzz(operation, check) -> None:  # type: ignore[no-untyped-def]
    run = settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(given(case=operation.as_strategy())(check))
    run()

"""The store on SQLite and PostgreSQL: migrations, constraints, JSON columns, transactions."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from modelport.store.db import Store
from modelport.store.events import add_event
from modelport.store.tables import Event, Model, Project, Service


def _project(s, pid: str = "p" * 32) -> Project:  # type: ignore[no-untyped-def]
    p = Project(id=pid, name=f"proj-{pid[:4]}", created_at=1)
    s.add(p)
    return p


def _model(pid: str, mid: str, version: str = "1.0.0") -> Model:
    return Model(
        id=mid,
        project_id=pid,
        owner="admin",
        name="m",
        version=version,
        model_type="Custom",
        status="published",
        source_location="/x",
        request={"a": [1, 2]},
        config={"model_type": "Custom", "apis": [{"url": "/"}]},
        created_at=1,
    )


def test_migrations_create_schema_and_are_idempotent(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    store.migrate()
    tables = set(inspect(store.engine).get_table_names())
    assert {
        "projects",
        "users",
        "memberships",
        "models",
        "services",
        "instances",
        "events",
        "alembic_version",
    } <= tables
    store.dispose()


def test_round_trip_json_and_constraints(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    with store.session() as s:
        _project(s)
        s.flush()
        s.add(_model("p" * 32, "m1"))
    with store.session() as s:
        m = s.get(Model, "m1")
        assert m.config["apis"] == [{"url": "/"}] and m.request == {"a": [1, 2]}
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(_model("p" * 32, "m2"))  # same name + version in the project
    with store.session() as s:
        assert s.scalar(select(Model).where(Model.id == "m2")) is None  # rolled back, nothing half-done
    store.dispose()


def test_services_and_events(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    with store.session() as s:
        _project(s)
        s.flush()
        s.add(
            Service(
                id="s1",
                project_id="p" * 32,
                owner="admin",
                name="svc",
                infer_type="real-time",
                desired="running",
                status="deploying",
                config=[{"model_id": "m1", "weight": 100, "revision": "abc"}],
                publish_at=1,
                update_time=1,
                transition_at=1,
            )
        )
        add_event(s, "s1", "p" * 32, "Start to deploy service svc.")
        add_event(s, "s1", "p" * 32, "failed", abnormal=True)
    with store.session() as s:
        svc = s.get(Service, "s1")
        assert svc.config[0]["revision"] == "abc"
        svc.config = [*svc.config, {"model_id": "m2", "weight": 0, "revision": "def"}]
    with store.session() as s:
        assert [c["revision"] for c in s.get(Service, "s1").config] == ["abc", "def"]
        kinds = [e.event_type for e in s.scalars(select(Event).order_by(Event.id))]
        assert kinds == ["normal", "abnormal"]
    store.dispose()

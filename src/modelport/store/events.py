"""Service events (spec §1.7): the narrative of what happened to a service and why."""

from __future__ import annotations

from sqlalchemy.orm import Session

from modelport.store.tables import Event
from modelport.timeutil import now_ms


def add_event(session: Session, service_id: str, project_id: str, info: str, *, abnormal: bool = False) -> None:
    session.add(
        Event(
            service_id=service_id,
            project_id=project_id,
            event_type="abnormal" if abnormal else "normal",
            event_info=info,
            occur_time=now_ms(),
        )
    )

"""Tables of the store. Only the store and its users see these classes; the API speaks pydantic models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    # Tokens issued before this time (epoch seconds) are refused: password change, user delete.
    tokens_valid_after: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Platform administrator: manages users and projects (migration 0004).
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class Membership(Base):
    __tablename__ = "memberships"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("project_id", "name", "version", name="uq_model_name_version"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(16))
    model_type: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    failed_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str] = mapped_column(String(128), default="")
    source_location: Mapped[str] = mapped_column(Text)
    store_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_algorithm: Mapped[str | None] = mapped_column(String(64), nullable=True)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the CreateModel body, for ShowModel
    created_at: Mapped[int] = mapped_column(BigInteger)


class Service(Base):
    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_service_name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(128), default="")
    infer_type: Mapped[str] = mapped_column(String(16))
    workspace_id: Mapped[str] = mapped_column(String(64), default="0")
    # What the user asked for: "running" or "stopped"; "deleted" once a DELETE was accepted.
    desired: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    error_msg: Mapped[str | None] = mapped_column(Text, nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    # ServiceConfig entries as the user gave them (validated), with a stable per-entry revision.
    config: Mapped[list[Any]] = mapped_column(JSON)
    schedule: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    due_time: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    additional_properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # spec fields we keep and echo back
    generation: Mapped[int] = mapped_column(Integer, default=1)
    invocation_times: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_times: Mapped[int] = mapped_column(BigInteger, default=0)
    publish_at: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    transition_at: Mapped[int] = mapped_column(BigInteger)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)  # index of the service config entry it serves
    revision: Mapped[str] = mapped_column(String(16))  # hash of what it runs (model, envs, flavor)
    model_id: Mapped[str] = mapped_column(String(36))
    # starting | ready | notReady | crashed | failed | draining | stopped
    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    start_failures: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ready_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    next_start_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Kept after the process is gone, so logs of replaced instances stay readable.
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    ended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(String(36), index=True)
    project_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(16))  # normal | abnormal
    event_info: Mapped[str] = mapped_column(Text)
    occur_time: Mapped[int] = mapped_column(BigInteger, index=True)


class ServiceUpdate(Base):
    """Configuration-update history (spec ShowServiceUpdateLogs): one row per create/update of config."""

    __tablename__ = "service_updates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(BigInteger)
    result: Mapped[str] = mapped_column(String(16))  # RUNNING | SUCCESS | FAIL
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    config: Mapped[list[Any]] = mapped_column(JSON)


class BatchJob(Base):
    """Progress of a batch service's job (one per service); the checkpoint's summary, updated with it."""

    __tablename__ = "batch_jobs"
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # running | finished | failed
    total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None until the inputs are counted
    succeeded: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)  # records/s, recent
    milestone: Mapped[int] = mapped_column(Integer, default=0)  # last progress milestone announced (%)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class BatchRecord(Base):
    """A committed record of a batch job: present means its outcome is final and its output written.

    Key: the input's URL and, for CSV inputs, the row (0-based); -1 stands for a whole input.
    `output` holds a CSV row's result line until the job assembles the input's result file.
    """

    __tablename__ = "batch_records"
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(Text, primary_key=True)
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


# ---- security (migration 0004): AK/SK pairs, apps, AppCodes, app-service bindings ------------------


class AccessKey(Base):
    """An AK/SK pair of a user. The SK is sealed (AES-GCM, `auth/secrets.py`): the verifier needs it back."""

    __tablename__ = "access_keys"
    access_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    secret_sealed: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)


class App(Base):
    """An app of a project: AppKey/AppSecret for signed predictions, AppCodes for simple ones."""

    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_app_name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(255), default="")
    owner: Mapped[str] = mapped_column(String(64))
    app_key: Mapped[str] = mapped_column(String(64), unique=True)
    secret_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


class AppCode(Base):
    """An AppCode: only its SHA-256 is kept; the code itself is shown once, at creation."""

    __tablename__ = "app_codes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(8))  # first characters, to tell codes apart
    created_at: Mapped[int] = mapped_column(BigInteger)


class AppBinding(Base):
    """The app may call the service (spec §5.3 "app authorised for the service")."""

    __tablename__ = "app_bindings"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    service_id: Mapped[str] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

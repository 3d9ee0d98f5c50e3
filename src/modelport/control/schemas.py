"""Request bodies of the management API (spec §1.2, §1.3, §2.2). Unknown fields are rejected."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MODEL_TYPES = (
    "TensorFlow",
    "PyTorch",
    "MindSpore",
    "MXNet",
    "Caffe",
    "Spark_MLlib",
    "Scikit_Learn",
    "XGBoost",
    "Custom",
    "Image",
    "LLM",
    "Template",
)
_VERSION_RE = re.compile(r"^(0|[1-9]\d?)\.(0|[1-9]\d?)\.(0|[1-9]\d?)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _no_chars(forbidden: str):  # type: ignore[no-untyped-def]
    def check(value: str | None) -> str | None:
        if value is not None and any(c in value for c in forbidden):
            raise ValueError(f"must not contain any of {forbidden}")
        return value

    return check


def _int_lenient(value: Any) -> Any:
    # The spec's own examples send weight as a string ("70").
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


LenientInt = Annotated[int, BeforeValidator(_int_lenient)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateModelRequest(_Strict):
    model_name: str
    model_version: str
    model_type: str
    source_location: str | None = None
    runtime: str | None = None
    description: str | None = Field(default=None, max_length=100)
    model_algorithm: str | None = Field(default=None, max_length=36)
    initial_config: str | None = None
    execution_code: str | None = None
    model_metrics: str | None = None
    apis: list[dict[str, Any]] | None = None
    input_params: list[dict[str, Any]] | None = None
    output_params: list[dict[str, Any]] | None = None
    dependencies: list[dict[str, Any]] | None = None
    model_docs: list[dict[str, Any]] | None = Field(default=None, max_length=3)
    install_type: list[str] | None = None
    workspace_id: str = "0"
    source_copy: str | None = None
    source_job_id: str | None = None
    source_job_version: str | None = None
    source_type: str | None = None
    template: dict[str, Any] | None = None
    cmd: str | None = None
    deployment_constraints: dict[str, Any] | None = None

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("1-64 characters: letters, digits, '-' and '_'")
        return v

    @field_validator("model_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not _VERSION_RE.match(v):
            raise ValueError("must look like N.N.N, each part 0-99 without leading zeros (e.g. 1.0.0)")
        return v

    @field_validator("model_type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v not in MODEL_TYPES:
            raise ValueError(f"must be one of {', '.join(MODEL_TYPES)}")
        return v

    _desc = field_validator("description")(_no_chars("&!'\"<>="))


class CustomSpec(_Strict):
    cpu: float = Field(ge=0.01)
    memory: int = Field(ge=1)
    gpu_p4: float | None = Field(default=None, ge=0)
    gpu: float | None = Field(default=None, ge=0)


class ServiceConfigIn(_Strict):
    model_id: str = Field(min_length=1)
    specification: str = Field(min_length=1)
    custom_spec: CustomSpec | None = None
    instance_count: LenientInt = Field(ge=1, le=128)
    weight: LenientInt | None = None
    envs: dict[str, str] = Field(default_factory=dict)
    deploy_timeout_in_seconds: LenientInt | None = Field(default=None, ge=1, le=7200)
    src_path: str | None = None
    dest_path: str | None = None
    req_uri: str | None = None
    mapping_type: Literal["file", "csv"] | None = None
    mapping_rule: dict[str, Any] | None = None
    src_type: str | None = None
    cluster_id: str | None = None
    pool_name: str | None = None
    nodes: list[str] | None = None
    additional_properties: dict[str, Any] | None = None
    affinity: dict[str, Any] | None = None

    @field_validator("envs")
    @classmethod
    def _envs(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k in v if not _ENV_RE.match(k)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(bad)}")
        return v


class ScheduleIn(_Strict):
    type: Literal["stop"]
    time_unit: Literal["DAYS", "HOURS", "MINUTES"]
    duration: LenientInt = Field(ge=1)


class CreateServiceRequest(_Strict):
    service_name: str = Field(min_length=1, max_length=64)
    infer_type: Literal["real-time", "batch", "edge"]
    config: list[ServiceConfigIn] = Field(min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=100)
    workspace_id: str = "0"
    schedule: list[ScheduleIn] | None = None
    cluster_id: str | None = None
    pool_name: str | None = None
    vpc_id: str | None = None
    security_group_id: str | None = None
    subnet_network_id: str | None = None
    additional_properties: dict[str, Any] | None = None
    load_balancer_policy: Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "PREFIX_AFFINITY"] | None = None
    service_secrets: list[dict[str, Any]] | None = None
    priority: LenientInt | None = Field(default=None, ge=1, le=3)

    @field_validator("service_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("1-64 characters: letters, digits, '-' and '_'")
        return v

    _desc = field_validator("description")(_no_chars("!<>+&\"'"))


class UpdateServiceRequest(_Strict):
    description: str | None = Field(default=None, max_length=100)
    config: list[ServiceConfigIn] | None = Field(default=None, min_length=1, max_length=20)
    status: Literal["running", "stopped"] | None = None
    schedule: list[ScheduleIn] | None = None
    additional_properties: dict[str, Any] | None = None
    load_balancer_policy: Literal["ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "PREFIX_AFFINITY"] | None = None
    service_secrets: list[dict[str, Any]] | None = None
    priority: LenientInt | None = Field(default=None, ge=1, le=3)

    _desc = field_validator("description")(_no_chars("<>=&\"'"))


class _AuthUserDomain(BaseModel):
    name: str | None = None
    id: str | None = None


class _AuthUser(BaseModel):
    name: str
    password: str
    domain: _AuthUserDomain | None = None


class _AuthPassword(BaseModel):
    user: _AuthUser


class _AuthIdentity(BaseModel):
    methods: list[str]
    password: _AuthPassword


class _AuthScopeProject(BaseModel):
    name: str | None = None
    id: str | None = None


class _AuthScope(BaseModel):
    project: _AuthScopeProject | None = None


class _Auth(BaseModel):
    identity: _AuthIdentity
    scope: _AuthScope | None = None


class TokenRequest(BaseModel):
    """IAM `POST /v3/auth/tokens`, password method."""

    auth: _Auth

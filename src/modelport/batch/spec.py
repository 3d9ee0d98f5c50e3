"""What a batch service's config means (spec §6), checked once: `JobSpec`, and its validation.

The control plane calls `validate` before it stores anything, so a batch service that would fail
at once (missing fields, a bad mapping_rule, a `dest_path` that takes no writes) is never created;
the runner builds the same `JobSpec` from the stored config when it runs the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelport.batch.mapping import Mapping, RuleError, compile_rule
from modelport.batch.settings import BatchSettings
from modelport.batch.storage import Location, check_writable, resolve
from modelport.errors import E, PlatformError

DEFAULT_FILE_FIELD = "images"
_REQUIRED = ("src_path", "dest_path", "req_uri", "mapping_type")


@dataclass(frozen=True)
class JobSpec:
    service_id: str
    src: Location
    dest: Location
    mode: str  # "file": one call per input file; "csv": one call per CSV row
    manifest: bool  # src is a JSON-lines manifest of {"source": url}
    mapping: Mapping | None  # csv mode only
    req_uri: str
    file_field: str  # file mode: the multipart field the model's API takes the file in


def job_spec(
    service_id: str, cfg: dict[str, Any], model_config: dict[str, Any] | None, settings: BatchSettings
) -> JobSpec:
    """Interpret one batch ServiceConfig; `PlatformError` says what is missing or wrong."""
    for name in _REQUIRED:
        if not cfg.get(name):
            raise PlatformError(E.BATCH_PARAM_MISSING, field=name, detail="")
    mode = cfg["mapping_type"]
    if mode not in ("file", "csv"):
        raise PlatformError(E.BATCH_CONFIG_INVALID, detail=f"mapping_type must be file or csv, not {mode!r}")
    src_type = cfg.get("src_type") or ""
    if src_type not in ("", "ManifestFile"):
        raise PlatformError(E.BATCH_CONFIG_INVALID, detail=f"src_type must be empty or ManifestFile, not {src_type!r}")
    mapping = None
    if mode == "csv":
        if not cfg.get("mapping_rule"):
            raise PlatformError(E.BATCH_PARAM_MISSING, field="mapping_rule", detail=" with mapping_type csv")
        try:
            mapping = compile_rule(cfg["mapping_rule"])
        except RuleError as exc:
            raise PlatformError(E.BATCH_CONFIG_INVALID, detail=f"mapping_rule: {exc}") from None
    req_uri = cfg["req_uri"]
    if not req_uri.startswith("/"):
        raise PlatformError(E.BATCH_CONFIG_INVALID, detail=f"req_uri must be a path starting with '/', not {req_uri!r}")
    apis = (model_config or {}).get("apis") or []
    urls = sorted({a.get("url", "/") for a in apis if isinstance(a, dict)})
    if urls and req_uri not in urls:
        raise PlatformError(
            E.BATCH_CONFIG_INVALID, detail=f"req_uri {req_uri} is not an API of the model; it serves {', '.join(urls)}"
        )
    src = resolve(cfg["src_path"], settings, field="src_path")
    dest = resolve(cfg["dest_path"], settings, field="dest_path")
    if _inside(dest, src):
        raise PlatformError(
            E.BATCH_CONFIG_INVALID, detail="dest_path must not be inside src_path: the results would become inputs"
        )
    return JobSpec(
        service_id=service_id,
        src=src,
        dest=dest,
        mode=mode,
        manifest=src_type == "ManifestFile",
        mapping=mapping,
        req_uri=req_uri,
        file_field=file_field(apis, req_uri),
    )


def file_field(apis: list[Any], req_uri: str) -> str:
    """The request property of type `file` of the API at `req_uri` (default `images`)."""
    for api in apis:
        if not isinstance(api, dict) or api.get("url", "/") != req_uri:
            continue
        data = (api.get("request") or {}).get("data") or {}
        for name, prop in (data.get("properties") or {}).items():
            if isinstance(prop, dict) and prop.get("type") == "file":
                return str(name)
    return DEFAULT_FILE_FIELD


def _inside(dest: Location, src: Location) -> bool:
    if type(dest.fs) is not type(src.fs):
        return False
    a, b = dest.path.rstrip("/") + "/", src.path.rstrip("/") + "/"
    return a.startswith(b)


def validate(
    configs: list[dict[str, Any]], model_config: dict[str, Any] | None, settings: BatchSettings | None = None
) -> JobSpec:
    """CreateService of a batch service: exactly one config, complete, with a writable dest_path."""
    if len(configs) != 1:
        raise PlatformError(
            E.BATCH_CONFIG_INVALID, detail=f"a batch service takes exactly one config, got {len(configs)}"
        )
    spec = job_spec("", configs[0], model_config, settings or BatchSettings())
    check_writable(spec.dest)
    return spec

"""Error catalog: every platform error code, its HTTP status and the message that tells the user what to do.

Codes follow the ModelArts spec where it defines the condition (`ModelArts.xxxx`, `APIG.xxxx`);
conditions the spec does not name get `MP.xxxx` codes of ours. Every part raises `PlatformError`
with an entry of this catalog, so a platform error is always `{"error_code", "error_msg"}` and a
model's own response never is one of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    code: str
    status: int
    message: str  # str.format template; the hint of what to do goes here


class E:
    """The catalog. Attribute names are ours; `code` values are the wire contract."""

    # Generic request problems
    INVALID_ARGUMENT = ErrorSpec("ModelArts.0101", 400, "Invalid argument: {detail}")
    BAD_JSON = ErrorSpec("ModelArts.4105", 400, "Malformed JSON body: {detail}. Send a valid JSON object.")
    BODY_TOO_LARGE_API = ErrorSpec("MP.0413", 413, "Request body is larger than {limit} bytes.")
    NOT_FOUND = ErrorSpec("MP.0404", 404, "No such path: {method} {path}. See /docs for the API.")
    METHOD_NOT_ALLOWED = ErrorSpec("ModelArts.2803", 405, "Method {method} is not allowed on {path}.")
    INTERNAL = ErrorSpec(
        "ModelArts.0010", 500, "Internal error ({detail}). Check the platform log; request id {request_id}."
    )

    # Authentication / authorization (spec §1.13 generic codes)
    NO_TOKEN = ErrorSpec("ModelArts.0201", 401, "No X-Auth-Token header. Get a token with POST /v3/auth/tokens.")
    TOKEN_EXPIRED = ErrorSpec("ModelArts.0202", 401, "Token expired. Get a new one with POST /v3/auth/tokens.")
    TOKEN_INVALID = ErrorSpec(
        "ModelArts.0203", 401, "Token is invalid or revoked. Get a new one with POST /v3/auth/tokens."
    )
    BAD_CREDENTIALS = ErrorSpec("MP.0401", 401, "Wrong user name or password.")
    PROJECT_MISMATCH = ErrorSpec(
        "ModelArts.0210",
        403,
        "Project {project_id} does not match the project of your token. Use a token scoped to it.",
    )
    FORBIDDEN = ErrorSpec("ModelArts.0108", 403, "Not authorized for {action}.")
    # AK/SK signatures on the management API (spec §1.13: 0205 no auth header, 0206 bad auth header)
    SIGNATURE_INVALID = ErrorSpec(
        "ModelArts.0206", 401, "AK/SK signature rejected: {reason}. Check the AK/SK pair and the signed request."
    )
    LOGIN_THROTTLED = ErrorSpec(
        "MP.0429", 429, "Too many failed logins for this user from this address; retry in {retry_after} s."
    )
    NOT_ADMIN = ErrorSpec("ModelArts.0108", 403, "Not authorized for {action}: only a platform administrator may.")
    USER_NOT_FOUND = ErrorSpec("MP.1404", 404, "User {user_id} not found. List users with GET /v3/users.")
    USER_EXISTS = ErrorSpec("MP.1409", 409, "A user named {name} already exists. Pick another name.")
    PROJECT_NOT_FOUND = ErrorSpec(
        "MP.1414", 404, "Project {project_id} not found. List projects with GET /v3/projects."
    )
    PROJECT_EXISTS = ErrorSpec("MP.1419", 409, "A project named {name} already exists. Pick another name.")
    CREDENTIAL_NOT_FOUND = ErrorSpec(
        "MP.1424", 404, "Access key {access_key} not found. List yours with GET /v3.0/OS-CREDENTIAL/credentials."
    )
    CREDENTIAL_QUOTA = ErrorSpec("MP.1425", 400, "A user may hold at most {limit} access keys; delete one first.")
    APP_NOT_FOUND = ErrorSpec("MP.1434", 404, "App {app_id} not found. List apps with GET /v1/{{project_id}}/apps.")
    APP_EXISTS = ErrorSpec("MP.1439", 409, "An app named {name} already exists in this project. Pick another name.")
    APP_CODE_NOT_FOUND = ErrorSpec("MP.1444", 404, "AppCode {code_id} not found in app {app_id}.")
    APP_CODE_QUOTA = ErrorSpec("MP.1445", 400, "An app may hold at most {limit} AppCodes; remove one first.")
    LAST_ADMIN = ErrorSpec("MP.1450", 400, "{detail}: the platform needs at least one administrator.")

    # Models (spec §2.4)
    MODEL_NOT_FOUND = ErrorSpec(
        "ModelArts.3001", 404, "Model {model_id} not found. List models with GET /v1/{{project_id}}/models."
    )
    MODEL_EXISTS = ErrorSpec(
        "ModelArts.3002", 409, "Model {name} version {version} already exists. Pick another model_version."
    )
    MODEL_IN_USE = ErrorSpec(
        "ModelArts.3009",
        400,
        "Model {model_id} is used by service(s) {services}. Delete or update them first.",
    )
    MODEL_CONFIG_INVALID = ErrorSpec("ModelArts.3015", 400, "config.json is not to spec: {detail}")
    MODEL_CONFIG_UNSUPPORTED = ErrorSpec("ModelArts.3016", 400, "config.json has an unsupported value: {detail}")
    MODEL_SOURCE_INVALID = ErrorSpec("ModelArts.3017", 400, "Bad source_location {location}: {detail}")
    MODEL_PARAM_INVALID = ErrorSpec("ModelArts.3037", 400, "Invalid parameter {param}: {detail}")

    # Services (spec §1.13)
    SERVICE_NOT_FOUND = ErrorSpec(
        "ModelArts.3502",
        404,
        "Service {service_id} not found. List services with GET /v1/{{project_id}}/services.",
    )
    SERVICE_EXISTS = ErrorSpec(
        "ModelArts.3503", 409, "A service named {name} already exists. Pick another service_name."
    )
    SERVICE_MODEL_NOT_FOUND = ErrorSpec("ModelArts.3506", 400, "Model {model_id} in config[{index}] not found.")
    MODEL_NOT_PUBLISHED = ErrorSpec(
        "ModelArts.3515",
        400,
        "Model {model_id} is {status}, not published. Wait for it to be published or import it again.",
    )
    DUPLICATE_MODEL_VERSION = ErrorSpec(
        "ModelArts.3516", 400, "Two configs use the same model version ({model}). Each config needs its own."
    )
    STATE_CONFLICT = ErrorSpec("ModelArts.3519", 400, "Service is {status}; {action} is not allowed now. {hint}")
    TOO_MANY_INSTANCES = ErrorSpec(
        "ModelArts.3522",
        400,
        "{requested} instances of {spec} need more than this node has ({detail}). Lower instance_count.",
    )
    NO_SUCH_FLAVOR = ErrorSpec(
        "ModelArts.3976",
        400,
        "Unknown specification {spec}. See GET /v1/{{project_id}}/services/specifications.",
    )
    INFER_TYPE_UNSUPPORTED = ErrorSpec(
        "ModelArts.3518", 400, "infer_type {infer_type} is not supported yet. Use real-time."
    )
    MODEL_TYPE_MISMATCH = ErrorSpec(
        "ModelArts.3589", 400, "Model {model_id} cannot be deployed as a {infer_type} service."
    )
    WEIGHTS_INVALID = ErrorSpec("MP.3001", 400, "Weights must be integers 0-100 summing to 100; got {weights}.")

    # Batch services (spec §6; the OBS path codes of §1.13 cover every storage URL)
    BATCH_PARAM_MISSING = ErrorSpec(
        "ModelArts.3610", 400, "{field} must not be empty for a batch service{detail}. See spec §6 for its form."
    )
    BATCH_CONFIG_INVALID = ErrorSpec("ModelArts.0101", 400, "Invalid batch config: {detail}")
    BATCH_PATH_MISSING = ErrorSpec(
        "ModelArts.3551", 400, "{field} {url} does not exist ({detail}). Create the bucket or directory first."
    )
    BATCH_PATH_ERROR = ErrorSpec(
        "ModelArts.3567", 400, "{field} {url} cannot be written ({detail}). Check the path and its permissions."
    )
    BATCH_PATH_INVALID = ErrorSpec(
        "ModelArts.3572",
        400,
        "{field} {url} is not a usable storage URL: {detail}. "
        "Use an absolute local path, file:///dir, s3://bucket/dir or obs://bucket/dir.",
    )

    # Gateway / dispatcher (spec §5.5)
    GW_SERVICE_NOT_FOUND = ErrorSpec(
        "ModelArts.4201", 404, "No service {service_id} behind this address. Check the URL."
    )
    GW_NO_SERVICE_ID = ErrorSpec("ModelArts.4201", 400, "URL has no service id. Call /v1/infers/{{service_id}}.")
    GW_NOT_RUNNING = ErrorSpec("ModelArts.4203", 503, "Service {service_id} is {status}; start it and retry.")
    GW_NO_INSTANCE = ErrorSpec(
        "ModelArts.4302", 503, "Service {service_id} has no ready instance right now; retry shortly."
    )
    GW_UPSTREAM_FAILED = ErrorSpec(
        "ModelArts.4503",
        502,
        "The model instance could not be reached ({detail}); retry, or check the service's events and logs.",
    )
    GW_TIMEOUT = ErrorSpec("ModelArts.4503", 504, "The model did not answer within {timeout} s.")
    GW_BODY_TOO_LARGE = ErrorSpec("ModelArts.4104", 413, "Request body is over the {limit}-byte limit.")
    GW_STOPPING = ErrorSpec("ModelArts.4700", 503, "The gateway is shutting down; retry on another node or shortly.")
    GW_THROTTLED = ErrorSpec(
        "ModelArts.4206",
        429,
        "Service {service_id} is over its limit of {limit} requests/s; retry after {retry_after} s.",
    )
    GW_IAM_AUTH_FAILED = ErrorSpec("APIG.0301", 401, "IAM AK/SK authentication failed: {reason}.")
    GW_APP_AUTH_FAILED = ErrorSpec("APIG.0303", 401, "App authentication failed: {reason}.")
    GW_APP_NOT_AUTHORIZED = ErrorSpec(
        "APIG.0304", 403, "The app is not authorized for service {service_id}. Bind it with `modelport app bind`."
    )
    GW_NO_CREDENTIAL = ErrorSpec(
        "ModelArts.0201",
        401,
        "No credential: send X-Auth-Token, an SDK-HMAC-SHA256 Authorization signature or X-Apig-AppCode.",
    )
    GW_PROJECT_MISMATCH = ErrorSpec(
        "ModelArts.0210",
        403,
        "Your token is not scoped to the project of service {service_id}. Use a token of that project.",
    )

    # Instance runtimes (the python handler server answers these itself, before any model code runs)
    RUNTIME_NO_API = ErrorSpec("MP.4404", 404, "No inference API at {method} {path}. This model serves: {urls}.")
    RUNTIME_NOT_READY = ErrorSpec("MP.4503", 503, "The model is {state}; retry once GET /health answers 200.")
    RUNTIME_STOPPED = ErrorSpec(
        "MP.4504", 503, "The instance shut down before the model answered (grace period over); retry."
    )
    RUNTIME_NO_WEBSOCKET = ErrorSpec(
        "MP.4405",
        403,
        "This model does not serve WebSocket at {path}: its service class has no `websocket` hook. "
        "Call it over HTTP, or add `async def websocket(self, messages)` to customize_service.py.",
    )
    BAD_FORM = ErrorSpec(
        "ModelArts.4200",
        400,
        "Malformed multipart/form-data body: {detail}. Send fields like -F images=@file.png.",
    )

    # Gateway: WebSocket sessions (the close reason of a session the platform ends starts with the code)
    GW_NO_WEBSOCKET = ErrorSpec(
        "MP.4210",
        400,
        "Service {service_id} does not accept WebSocket upgrades: it was deployed without "
        "additional_properties.websocket_upgrade=true. Call it over HTTP, or deploy it with the flag.",
    )
    GW_WS_RATE_LIMITED = ErrorSpec(
        "MP.4211", 429, "over {rate:g} messages/s on this WebSocket session; slow down and reconnect"
    )
    GW_WS_MESSAGE_TOO_LARGE = ErrorSpec("ModelArts.4104", 413, "WebSocket message over the {limit}-byte limit")
    GW_WS_INSTANCE_LOST = ErrorSpec("ModelArts.4503", 502, "connection to the model instance lost ({detail})")


class PlatformError(Exception):
    """An error the platform made, rendered as `{"error_code", "error_msg"}` with the catalog's status."""

    def __init__(self, spec: ErrorSpec, /, **fields: Any) -> None:
        self.spec = spec
        self.fields = fields
        try:
            self.message = spec.message.format(**fields)
        except (KeyError, IndexError):
            self.message = spec.message
        super().__init__(f"{spec.code}: {self.message}")

    @property
    def status(self) -> int:
        return self.spec.status

    @property
    def code(self) -> str:
        return self.spec.code

    def body(self, request_id: str | None = None) -> dict[str, str]:
        out = {"error_code": self.spec.code, "error_msg": self.message}
        if request_id:
            out["request_id"] = request_id
        return out

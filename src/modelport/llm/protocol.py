"""The OpenAI-compatible wire format: request schemas, their validation, and response/chunk bodies.

Requests are validated here, so every bad parameter becomes a 400 OpenAI error object naming it:
`{"error": {"message", "type": "invalid_request_error", "param", "code"}}`. Unknown fields are
ignored (clients send fields we do not implement, such as `user`). Extensions beyond OpenAI,
as in vLLM: `top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`, `ignore_eos`,
`include_stop_str_in_output`, `skip_special_tokens`, `cache_salt` (prefix-cache isolation).
Defaults follow vLLM: temperature 1, top_p 1, top_k -1, `max_tokens` 16 on /v1/completions and
"up to the context length" on /v1/chat/completions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelport.llm.request import RequestOutput, SamplingParams, TokenLogprob

MAX_LOGPROBS = 20
MAX_N = 64
MIN_LOGPROB = -9999.0  # JSON has no -inf


class APIError(Exception):
    """An error answered as an OpenAI error object."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type = message, param, status, type
        self.code = code if code is not None else ("invalid_value" if param else None)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    n: int = 1
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    cache_salt: str | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool | None = False
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a decoded JSON body; the first error becomes an APIError naming its parameter."""
    if not isinstance(body, dict):
        raise APIError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("str", "list", "int"))]
        param = ".".join(loc) or None
        raise APIError(f"{param}: {err['msg']}" if param else err["msg"], param) from None


def sampling_params(req: _Common, max_tokens: int, logprobs: int | None) -> SamplingParams:
    """Check ranges (400 naming the parameter) and build the engine's SamplingParams."""

    def check(ok: bool, param: str, message: str) -> None:
        if not ok:
            raise APIError(f"{param} {message}", param)

    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    top_k = -1 if req.top_k is None else req.top_k
    min_p = 0.0 if req.min_p is None else req.min_p
    presence = req.presence_penalty or 0.0
    frequency = req.frequency_penalty or 0.0
    repetition = 1.0 if req.repetition_penalty is None else req.repetition_penalty
    check(1 <= req.n <= MAX_N, "n", f"must be between 1 and {MAX_N}, got {req.n}")
    check(max_tokens >= 1, "max_tokens", f"must be at least 1, got {max_tokens}")
    check(temperature >= 0, "temperature", f"must be non-negative, got {temperature}")
    check(0 < top_p <= 1, "top_p", f"must be in (0, 1], got {top_p}")
    check(top_k == -1 or top_k >= 0, "top_k", f"must be -1 (disable) or at least 0, got {top_k}")
    check(0 <= min_p <= 1, "min_p", f"must be in [0, 1], got {min_p}")
    check(-2 <= presence <= 2, "presence_penalty", f"must be in [-2, 2], got {presence}")
    check(-2 <= frequency <= 2, "frequency_penalty", f"must be in [-2, 2], got {frequency}")
    check(repetition > 0, "repetition_penalty", f"must be greater than zero, got {repetition}")
    check(
        logprobs is None or 0 <= logprobs <= MAX_LOGPROBS,
        "logprobs" if isinstance(req, CompletionRequest) else "top_logprobs",
        f"must be between 0 and {MAX_LOGPROBS}, got {logprobs}",
    )
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    check(all(stop), "stop", "must not contain empty strings")
    check(
        req.stream_options is None or bool(req.stream),
        "stream_options",
        "can only be set when stream is true",
    )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k if top_k > 0 else -1,
        top_p=top_p,
        min_p=min_p,
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        seed=req.seed,
        stop=tuple(stop),
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ignore_eos=req.ignore_eos,
        include_stop_str_in_output=req.include_stop_str_in_output,
        logprobs=logprobs,
        skip_special_tokens=req.skip_special_tokens,
    )


def completion_prompts(req: CompletionRequest) -> list[str | list[int]]:
    """The prompts of a completion request (a string, token ids, or a batch of either)."""
    p = req.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise APIError("prompt must not be empty", "prompt")
    if all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return list(p)  # type: ignore[arg-type]


def chat_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for the chat template; text parts are joined, other parts refused."""
    out = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            for part in content:
                if part.type != "text" or part.text is None:
                    raise APIError(
                        f"messages[{i}].content: only text parts are supported, got {part.type!r}",
                        f"messages.{i}.content",
                    )
            content = "".join(part.text or "" for part in content)
        extra = {k: v for k, v in (m.model_extra or {}).items() if k in ("name", "tool_calls", "tool_call_id")}
        out.append({"role": m.role, "content": content or "", **extra})
    return out


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _clamp(lp: float) -> float:
    return max(lp, MIN_LOGPROB)


class LogprobFormatter:
    """Token strings for logprobs (each token decoded alone, as vLLM does)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def completion(self, lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
        tokens, text_offset = [], []
        for lp in lps:
            s = self.token(lp.token_id)
            tokens.append(s)
            text_offset.append(offset)
            offset += len(s)
        return {
            "tokens": tokens,
            "token_logprobs": [_clamp(lp.logprob) for lp in lps],
            "top_logprobs": [{self.token(t): _clamp(v) for t, v in lp.top} for lp in lps],
            "text_offset": text_offset,
        }

    def chat(self, lps: list[TokenLogprob]) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            s = self.token(token_id)
            return {"token": s, "logprob": _clamp(logprob), "bytes": list(s.encode())}

        return {
            "content": [
                {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in lps
            ]
        }


def finish_reason(output: RequestOutput) -> str | None:
    return str(output.finish_reason) if output.finish_reason is not None else None

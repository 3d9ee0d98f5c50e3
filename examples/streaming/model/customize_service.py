"""Streaming demo: token streaming over Server-Sent Events, and a chat over WebSocket.

`POST /` with `{"prompt": "...", "max_tokens": 20, "interval": 0.05}` streams one event per
"token", `interval` seconds apart, then `data: [DONE]` (config.json `stream.done_event`):

    curl -N localhost:8080/ -H 'Content-Type: application/json' -d '{"prompt": "hello"}'  # SSE
    curl -N localhost:8080/ -H 'Content-Type: application/json' -H 'Accept: application/x-ndjson' \
        -d '{"prompt": "hi"}'  # JSON lines

`ws://localhost:8080/chat`: a text message that is a JSON object `{"prompt": ...}` is answered
with its tokens, one message each, then `{"done": true}`; any other text or binary message is
echoed back as it came (text as text, bytes as bytes).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from modelport import BaseService

FILLER = "the quick brown fox jumps over the lazy dog while streams flow token by token"


def reply_tokens(prompt: str, max_tokens: int) -> list[str]:
    """A canned 'generation': the prompt's words, then filler words, `max_tokens` in all."""
    words = prompt.split() + FILLER.split()
    return [words[i % len(words)] for i in range(max_tokens)]


class StreamingService(BaseService):
    def _inference(self, data: Any) -> Iterator[dict[str, Any]]:
        data = data if isinstance(data, dict) else {}
        tokens = reply_tokens(str(data.get("prompt", "")), int(data.get("max_tokens", 20)))
        return self._stream(tokens, float(data.get("interval", 0.05)))

    def _stream(self, tokens: list[str], interval: float) -> Iterator[dict[str, Any]]:
        sent = 0
        try:
            for index, token in enumerate(tokens):
                time.sleep(interval)  # stands in for one decoding step of a real model
                yield {"index": index, "token": token}
                sent += 1
        except GeneratorExit:  # the client went away: the runtime closed this generator
            print(f"stream cancelled by the client after {sent} of {len(tokens)} tokens", file=sys.stderr)
            sys.stderr.flush()
            raise

    async def websocket(self, messages: AsyncIterator[str | bytes]) -> AsyncIterator[str | bytes]:
        async for message in messages:
            request = _prompt_request(message)
            if request is None:
                yield message  # echo: text stays text, bytes stay bytes
                continue
            for index, token in enumerate(reply_tokens(request["prompt"], request["max_tokens"])):
                await asyncio.sleep(request["interval"])
                yield json.dumps({"index": index, "token": token})
            yield json.dumps({"done": True})


def _prompt_request(message: str | bytes) -> dict[str, Any] | None:
    if not isinstance(message, str) or not message.startswith("{"):
        return None
    try:
        body = json.loads(message)
    except ValueError:
        return None
    if not isinstance(body, dict) or "prompt" not in body:
        return None
    return {
        "prompt": str(body["prompt"]),
        "max_tokens": int(body.get("max_tokens", 5)),
        "interval": float(body.get("interval", 0.01)),
    }

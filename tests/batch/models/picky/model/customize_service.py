"""Test model for batch services: echoes its input, fails on anything that says "poison".

JSON bodies are answered unchanged; an uploaded file (multipart field `doc`) is answered as
`{"doc": {"<file name>": {"bytes": n, "text": "<first 64 characters>"}}}`. Env `PICKY_DELAY_S`
slows every call down (so a test can stop or kill the platform mid-run).
"""

import json
import os
import time
from typing import Any

from modelport import BaseService


class PickyService(BaseService):
    def _preprocess(self, data: Any) -> Any:
        delay = float(os.environ.get("PICKY_DELAY_S", "0"))
        if delay:
            time.sleep(delay)
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, dict) and any(hasattr(f, "read") for f in value.values()):
                    files = {name: f.read() for name, f in value.items()}
                    if any(b"poison" in content for content in files.values()):
                        raise ValueError("poisoned file")
                    data[key] = {
                        name: {"bytes": len(content), "text": content.decode("utf-8", "replace")[:64]}
                        for name, content in files.items()
                    }
        if "poison" in json.dumps(data):
            raise ValueError("poisoned record")
        return data

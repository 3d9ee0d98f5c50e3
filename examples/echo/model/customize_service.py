"""Echo model: answers the decoded request body unchanged (used by tests and benchmarks).

Uploaded files (multipart) are answered as their sizes, `{field: {file_name: n_bytes}}`.
Over the Open Inference Protocol V2 (`POST /v2/models/echo/infer`) it echoes its input tensors
as output tensors of the same names: the runtime's V2 adapter hands them in as a dict of numpy
arrays and converts the returned dict back, with no code here.
"""

from typing import Any

from modelport import BaseService


class EchoService(BaseService):
    def _preprocess(self, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, dict) and any(hasattr(f, "read") for f in value.values()):
                    data[key] = {name: len(f.read()) for name, f in value.items()}
        return data

"""A test model that says what reached it: every request is printed (`probe: METHOD PATH BYTES`) before it
is answered, so a test can tell from the instance log whether the gateway let a request through.

POST /slow?s=N sleeps N seconds before answering; any other POST answers the body's length and sha256.
"""

import hashlib
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def do_GET(self) -> None:
        self._answer(200, b'{"health": "true"}' if self.path == "/health" else b"{}")

    def do_POST(self) -> None:
        try:
            body = self._body()
        except (OSError, ValueError):
            return  # the upload was cut: no request to answer
        print(f"probe: POST {self.path} {len(body)}", flush=True)
        url = urlsplit(self.path)
        if url.path == "/slow":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
        digest = hashlib.sha256(body).hexdigest()
        self._answer(200, f'{{"bytes": {len(body)}, "sha256": "{digest}"}}'.encode())

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ValueError("cut")
            parts.append(chunk)
            self.rfile.readline()

    def _answer(self, status: int, payload: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            print("probe: client gone", flush=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))), Handler)
    server.daemon_threads = True
    print("probe: listening", file=sys.stderr, flush=True)
    server.serve_forever()

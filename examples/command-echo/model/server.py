"""A command model with only the standard library: the smallest server that keeps the instance contract.

Listens on $HOST:$PORT (default 127.0.0.1:8080); GET /health answers {"health": "true"};
POST / answers {"echo": <the JSON body>, "greeting": $ECHO_GREETING}; SIGTERM finishes the
requests in flight and exits 0.
"""

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway reuses connections
    timeout = 5  # idle keep-alive connections end, so a SIGTERM exit does not wait on them

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, {"health": "true"})
        else:
            self._answer(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            data = json.loads(body) if body else {}
        except ValueError as exc:
            self._answer(400, {"error": f"bad JSON: {exc}"})
            return
        self._answer(200, {"echo": data, "greeting": os.environ.get("ECHO_GREETING", "")})

    def _answer(self, status: int, obj: object) -> None:
        payload = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write("command-echo: " + format % args + "\n")


def main() -> None:
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8080"))), Handler)
    # Non-daemon request threads are joined by server_close(): in-flight requests finish.
    server.daemon_threads = False
    # shutdown() blocks until serve_forever returns, so it cannot run in the signal handler itself.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"command-echo: listening on {server.server_address}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()

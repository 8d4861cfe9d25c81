#!/usr/bin/env python3
"""A foreman remote worker in Python's standard library alone.

It speaks the protocol of docs/REMOTE.md (HTTP/1.1 only):

  POST /v1/requests  a WorkerRequest as JSON -> 200 and a WorkerResponse;
                     the foreman-deadline-ms header bounds the run;
                     503 + Retry-After when more than --max-in-flight run
  GET  /v1/health    {"status": "healthy"} (503 "unavailable" while draining)
  GET  /v1/stats     the server's counters

Its handler echoes the request's node id after --sleep-ms milliseconds.

    python3 worker.py --listen 127.0.0.1:0 --max-in-flight 4 --sleep-ms 10

The first line it prints is "listening on HOST:PORT". SIGTERM drains: health
says unavailable, new requests get 503, running ones finish, then it exits.
"""

import argparse
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REQUESTS_PATH = "/v1/requests"
HEALTH_PATH = "/v1/health"
STATS_PATH = "/v1/stats"
DEADLINE_HEADER = "foreman-deadline-ms"
ROUTES = {REQUESTS_PATH: "POST", HEALTH_PATH: "GET", STATS_PATH: "GET"}

# The reference's default security policy.
MAX_REQUEST_BYTES = 256 * 1024
# How much of an unread request body a closing connection reads and
# discards, and for how long, so the client sees the answer before the close.
LINGER_BYTES = 4 * 1024 * 1024
LINGER_SECONDS = 2.0
MAX_IDENTIFIER_LENGTH = 128


class Invalid(Exception):
    """A request body that is not a WorkerRequest."""


def check_request(value):
    """Raises Invalid unless value has a WorkerRequest's shape."""
    if not isinstance(value, dict):
        raise Invalid("the body must be a JSON object")
    for field in ("request_id", "workflow_name", "node_id"):
        text = value.get(field)
        if not isinstance(text, str):
            raise Invalid(f"{field} must be a string")
        if len(text.encode("utf-8")) > MAX_IDENTIFIER_LENGTH:
            raise Invalid(f"{field} is longer than {MAX_IDENTIFIER_LENGTH} bytes")
    timeout = value.get("timeout_ms")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0
    ):
        raise Invalid("timeout_ms must be null or a non-negative integer")
    operation = value.get("operation")
    if not isinstance(operation, dict):
        raise Invalid("operation must be an object")
    kind = operation.get("kind")
    if kind == "tool":
        if not isinstance(operation.get("tool"), str):
            raise Invalid("a tool operation needs a string tool")
    elif kind == "llm":
        for field in ("model", "prompt"):
            if not isinstance(operation.get(field), str):
                raise Invalid(f"an llm operation needs a string {field}")
    else:
        raise Invalid('operation.kind must be "tool" or "llm"')


class Worker:
    """The worker's state, shared by its request threads."""

    def __init__(self, max_in_flight, sleep_ms, worker_id):
        self.max_in_flight = max_in_flight
        self.sleep_ms = sleep_ms
        self.worker_id = worker_id
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight = 0
        self.draining = False
        self.stats = {"started": 0, "answered": 0, "dropped": 0, "refused": 0}

    def enter(self):
        """Takes a run slot; False if none is free or the worker drains."""
        with self.lock:
            if self.draining or self.in_flight >= self.max_in_flight:
                self.stats["refused"] += 1
                return False
            self.in_flight += 1
            self.stats["started"] += 1
            return True

    def leave(self, answered):
        with self.lock:
            self.in_flight -= 1
            self.stats["answered" if answered else "dropped"] += 1
            self.idle.notify_all()

    def snapshot(self):
        with self.lock:
            return dict(self.stats, in_flight=self.in_flight)

    def run(self, request, budget_ms):
        """The handler: waits, then echoes; a timeout past the budget."""
        began = time.monotonic()
        wait_ms = self.sleep_ms
        timed_out = budget_ms is not None and wait_ms > budget_ms
        time.sleep((budget_ms if timed_out else wait_ms) / 1000.0)
        elapsed_ms = int((time.monotonic() - began) * 1000)
        if timed_out:
            result = {
                "status": "error",
                "error": {
                    "code": "timeout",
                    "message": "worker request timed out",
                    "retryable": True,
                },
            }
        else:
            result = {
                "status": "success",
                "output": {"node": request["node_id"], "worker": "python"},
            }
        return {
            "request_id": request["request_id"],
            "worker_id": self.worker_id,
            "result": result,
            "elapsed_ms": elapsed_ms,
        }


def make_handler(worker):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 (the base's name)
            pass

        def send_json(self, status, value, headers=()):
            body = json.dumps(value).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                # Without it a client may reuse the connection being closed.
                self.send_header("Connection", "close")
            for name, content in headers:
                self.send_header(name, content)
            self.end_headers()
            self.wfile.write(body)

        def linger(self):
            """Closes after an answer sent before the body was read: stops
            writing, then reads and discards (bounded in bytes and time) what
            the client still sends, so the close is not a reset that could
            destroy the answer before the client reads it."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(LINGER_SECONDS)
                discarded = 0
                deadline = time.monotonic() + LINGER_SECONDS
                while discarded < LINGER_BYTES and time.monotonic() < deadline:
                    chunk = self.connection.recv(65536)
                    if not chunk:
                        break
                    discarded += len(chunk)
            except OSError:
                pass

        def send_error_body(self, status, code, message, headers=()):
            self.send_json(status, {"error": {"code": code, "message": message}}, headers)

        def route(self, method):
            path = self.path.split("?", 1)[0]
            allowed = ROUTES.get(path)
            if allowed is None:
                if path.startswith("/v1/"):
                    return self.send_error_body(404, "not_found", f"no route {path}")
                version = path[2:].split("/", 1)[0] if path.startswith("/v") else ""
                if version.isdigit():
                    return self.send_error_body(
                        404,
                        "unsupported_version",
                        f"this worker speaks protocol version 1 only (/v1/); {path} is not served",
                    )
                return self.send_error_body(404, "not_found", f"no route {path}")
            if method != allowed:
                self.close_connection = True
                return self.send_error_body(
                    405,
                    "method_not_allowed",
                    f"{path} answers {allowed} only, not {method}",
                    [("Allow", allowed)],
                )
            if path == HEALTH_PATH:
                if worker.draining:
                    return self.send_json(503, {"status": "unavailable"})
                return self.send_json(200, {"status": "healthy"})
            if path == STATS_PATH:
                return self.send_json(200, worker.snapshot())
            return self.handle_request()

        def handle_request(self):
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self.close_connection = True
                return self.send_error_body(
                    400, "invalid_json", "a request needs a Content-Length body"
                )
            length = int(length)
            if length > MAX_REQUEST_BYTES:
                # The body is not read: the connection cannot be reused.
                self.close_connection = True
                self.send_error_body(
                    413,
                    "payload_too_large",
                    f"the request body is larger than the worker's limit of {MAX_REQUEST_BYTES} bytes",
                )
                return self.linger()
            body = self.rfile.read(length)
            deadline = self.headers.get(DEADLINE_HEADER)
            budget = None
            if deadline is not None:
                if not deadline.strip().isdigit():
                    return self.send_error_body(
                        400,
                        "invalid_deadline",
                        f"the {DEADLINE_HEADER} header must be a whole number of milliseconds",
                    )
                budget = int(deadline)
            try:
                request = json.loads(body)
                check_request(request)
            except (ValueError, Invalid) as problem:
                return self.send_error_body(
                    400, "invalid_json", f"the body is not a WorkerRequest in JSON: {problem}"
                )
            own = request.get("timeout_ms")
            if own is not None:
                budget = own if budget is None else min(budget, own)
            if not worker.enter():
                code = "draining" if worker.draining else "overloaded"
                return self.send_error_body(
                    503,
                    code,
                    f"the worker runs {worker.max_in_flight} requests at most and did not start this one",
                    [("Retry-After", "1")],
                )
            answered = False
            try:
                response = worker.run(request, budget)
                self.send_json(200, response)
                answered = True
            finally:
                worker.leave(answered)

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

        def do_PUT(self):
            self.route("PUT")

        def do_DELETE(self):
            self.route("DELETE")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="requests run at once")
    parser.add_argument("--sleep-ms", type=int, default=10, help="each request's run time")
    parser.add_argument("--drain-s", type=float, default=5.0, help="how long SIGTERM waits")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    worker = Worker(args.max_in_flight, args.sleep_ms, "python-worker")
    server = ThreadingHTTPServer((host, int(port)), make_handler(worker))
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    print(f"listening on {bound_host}:{bound_port}", flush=True)

    def drain(*_):
        def stop():
            with worker.lock:
                worker.draining = True
                end = time.monotonic() + args.drain_s
                while worker.in_flight > 0 and time.monotonic() < end:
                    worker.idle.wait(timeout=max(0.0, end - time.monotonic()))
            server.shutdown()

        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    server.server_close()
    print(f"drained: {worker.snapshot()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

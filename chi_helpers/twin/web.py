"""The twin's HTTP plumbing: one threaded server, services mounted by path prefix, JSON in and out.

A service is a prefix ("/compute/v2.1") and routes: (method, path pattern) -> handler(request).
Handlers return `reply(status, body)` or raise `Fault(status, message)`; each service says how its
errors look on the wire (`error_body`), since Nova, Neutron, Blazar and Keystone each differ. Every
request runs under the world's lock, and the state is saved after every one that changed it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .world import World


class Fault(Exception):
    """An HTTP error answer: the service turns it into its own error format."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Reply:
    status: int
    body: object = None  # dict/list (sent as JSON), bytes, or None
    headers: dict = field(default_factory=dict)


def reply(status: int = 200, body: object = None, **headers) -> Reply:
    return Reply(status, body, {k.replace("_", "-"): v for k, v in headers.items()})


@dataclass
class Request:
    world: World
    method: str
    path: str  # below the service's prefix, e.g. "/servers/abc"
    query: dict  # name -> list of values
    headers: dict  # lower-case names
    body: bytes
    match: re.Match | None = None

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise Fault(400, "the request body is not JSON") from None

    def arg(self, name: str, default=None):
        values = self.query.get(name)
        return values[0] if values else default

    def param(self, name: str) -> str:
        return self.match.group(name)

    def token(self) -> dict:
        """The Keystone token this request carries; 401 without a valid one. A token is valid only at the
        site whose Keystone issued it: each Chameleon site has its own (keystonemiddleware asks that one)."""
        value = self.headers.get("x-auth-token", "")
        token = self.world.data["tokens"].get(value)
        if not token or not self.issued_here(token):
            raise Fault(401, "The request you have made requires authentication.")
        return token

    def issued_here(self, token: dict) -> bool:
        """Was `token` issued by the Keystone of the site this request reached? (twin/sites.py places the sites.)"""
        addresses = self.world.data.get("site_addresses", {})
        return addresses.get(token.get("site"), self.world.address) == self.world.address


class Service:
    prefix = ""
    name = "service"
    routes: list[tuple[str, str, str]] = []  # (method, pattern, handler method name)

    def __init__(self, world: World):
        self.world = world
        self._compiled = [(m, re.compile(f"^{p}$"), getattr(self, h)) for m, p, h in self.routes]

    def error_body(self, status: int, message: str) -> dict:
        return {"error": {"code": status, "message": message}}

    def handle(self, request: Request) -> Reply:
        allowed = False
        for method, pattern, handler in self._compiled:
            match = pattern.match(request.path)
            if match:
                allowed = True
                if method == request.method:
                    request.match = match
                    return handler(request)
        if allowed:
            raise Fault(405, f"{request.method} is not allowed on {self.prefix}{request.path}")
        raise Fault(404, f"the resource could not be found: {self.prefix}{request.path}")


class TwinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], world: World, services: list[Service]):
        self.world = world
        # Longest prefix first, so "/identity/v3" wins over "/identity".
        self.services = sorted(services, key=lambda s: len(s.prefix), reverse=True)
        super().__init__(address, Handler)

    def dispatch(self, method: str, target: str, headers: dict, body: bytes) -> tuple[Reply, Service | None]:
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        for service in self.services:
            if path == service.prefix or path.startswith(service.prefix.rstrip("/") + "/") or service.prefix == "":
                below = path[len(service.prefix):] or "/"
                request = Request(self.world, method, below, parse_qs(parts.query), headers, body)
                try:
                    with self.world.lock:
                        answer = service.handle(request)
                        if method != "GET":
                            self.world.save()
                    return answer, service
                except Fault as fault:
                    return Reply(fault.status, service.error_body(fault.status, fault.message), fault.headers), service
        return Reply(404, {"error": f"nothing is mounted at {path}"}), None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TwinServer

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            answer, _ = self.server.dispatch(self.command, self.path, headers, body)
        except Exception as error:  # a bug in the twin: answer 500 as a real service would, and log it
            self.server.world.record("twin", f"500 on {self.command} {self.path}: {type(error).__name__}: {error}")
            answer = Reply(500, {"error": {"code": 500, "message": f"{type(error).__name__}: {error}"}})
        if isinstance(answer.body, (dict, list)):
            payload, kind = json.dumps(answer.body).encode(), "application/json"
        elif isinstance(answer.body, bytes):
            payload, kind = answer.body, "application/octet-stream"
        elif isinstance(answer.body, str):
            payload, kind = answer.body.encode(), "text/plain"
        else:
            payload, kind = b"", "application/json"
        self.send_response(answer.status)
        headers = {"Content-Type": kind, **answer.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        log = self.server.world.state_dir / "requests.log"
        with open(log, "a") as out:
            out.write(f"{self.command} {self.path} {answer.status}\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, *args):  # the requests log above replaces stderr noise
        pass


def serve(world: World, services: list[Service], address: str, port: int) -> TwinServer:
    """Start a server for `services` on (address, port) in a background thread."""
    server = TwinServer((address, port), world, services)
    threading.Thread(target=server.serve_forever, name=f"twin-{port}", daemon=True).start()
    return server

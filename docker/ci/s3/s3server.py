"""CI stand-in for `minio server DIR`: moto's S3 backend served on :9000, its state kept under DIR.

MinIO is not packaged for Debian or PyPI and image registries are out of reach in CI, so this serves
the S3 API that docker/compose-tracking.yaml needs (buckets, objects, multipart) with moto instead.
Only for CI: one process, everything in memory, the state written out on each write.

Persistence. moto keeps everything in memory, so after every write request (PUT, POST, DELETE) the
S3 state is pickled to DIR/.moto-s3/state.pickle (tmp file, fsync, rename) before the client gets
its answer; object bodies of 64 KiB and more go to content-addressed files in DIR/.moto-s3/blobs/,
so a save rewrites only the small metadata pickle plus the bodies that are new. Concurrent writes
share one save (group commit). On SIGTERM/SIGINT the server stops accepting and saves once more.
What SIGKILL can lose: only requests still in flight (not yet answered); every write that was
answered 2xx is on disk. A state file that cannot be read stops the server instead of starting
empty, so a moto upgrade that breaks the pickle cannot silently overwrite the data.
Cost: a save re-reads and hashes every stored body (about 0.1 s per write with 100 MB stored) and
holds them in memory while pickling; fine for CI's few artifacts, not for large stores.

Credentials. Only MINIO_ROOT_USER's access key (default minioadmin) is accepted; other keys, anonymous
and presigned-URL requests are refused, as are non-S3 services and moto's /moto-api (its reset would
wipe the store). The signature itself is not checked: moto's own SigV4 check (its IAM auth) rejected
valid requests from MLflow's boto3 (a ListObjectsV2 with an empty prefix and a `/` delimiter), so a
client with the right key and a wrong secret gets in here, where real MinIO would refuse it.
"""

import argparse
import hashlib
import io
import json
import os
import pickle
import signal
import socket
import sys
import threading
import time
import uuid
from xml.sax.saxutils import escape

# moto reads these when it is imported.
os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")  # path-style only, as MinIO without MINIO_DOMAIN

import moto  # noqa: E402
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: E402
from moto.s3.models import s3_backends  # noqa: E402
from werkzeug.serving import WSGIRequestHandler, make_server  # noqa: E402

STATE_FORMAT = 1
BLOB_MIN = 64 * 1024
MUTATING = {"PUT", "POST", "DELETE", "PATCH"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class _BlobPickler(pickle.Pickler):
    """Moves large bytes (object bodies) out of the pickle into content-addressed files."""

    def __init__(self, file, blob_dir):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.blob_dir = blob_dir
        self.used = set()

    def persistent_id(self, obj):
        if type(obj) is not bytes or len(obj) < BLOB_MIN:
            return None
        name = hashlib.sha256(obj).hexdigest()
        path = os.path.join(self.blob_dir, name)
        if name not in self.used and not os.path.exists(path):
            _write_durably(path, obj)
        self.used.add(name)
        return ("blob", name)


class _BlobUnpickler(pickle.Unpickler):
    def __init__(self, file, blob_dir):
        super().__init__(file)
        self.blob_dir = blob_dir

    def persistent_load(self, pid):
        kind, name = pid
        if kind != "blob":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        with open(os.path.join(self.blob_dir, name), "rb") as f:
            return f.read()


def _write_durably(path, data):
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The S3 state on disk, and the bookkeeping that makes each answered write durable."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, ".moto-s3")
        self.blob_dir = os.path.join(self.dir, "blobs")
        self.state_path = os.path.join(self.dir, "state.pickle")
        os.makedirs(self.blob_dir, exist_ok=True)
        self.lock = threading.Lock()  # held by each write request and while pickling
        self.save_mutex = threading.Lock()  # one save at a time
        self.cond = threading.Condition()
        self.seq = 0  # writes so far
        self.done_seq = 0  # writes covered by the last finished save attempt
        self.ok_seq = 0  # writes known to be on disk
        self.closed = False

    def load(self):
        if not os.path.exists(self.state_path):
            return 0
        with open(self.state_path, "rb") as f:
            state = _BlobUnpickler(f, self.blob_dir).load()
        if state.get("format") != STATE_FORMAT:
            raise RuntimeError(f"unknown state format {state.get('format')!r}")
        for account_id, per_partition in state["backends"].items():
            for partition, backend in per_partition.items():
                s3_backends[account_id][partition] = backend
        s3_backends.bucket_accounts.update(state["bucket_accounts"])
        return sum(len(b.buckets) for p in state["backends"].values() for b in p.values())

    def mark_dirty(self):
        """Called with self.lock held, after a write request changed (or may have changed) state."""
        with self.cond:
            self.seq += 1
            self.cond.notify_all()
            return self.seq

    def save(self):
        with self.save_mutex:
            buf = io.BytesIO()
            with self.lock:
                seq = self.seq
                state = {
                    "format": STATE_FORMAT,
                    "moto": moto.__version__,
                    "saved_at": time.time(),
                    "bucket_accounts": dict(s3_backends.bucket_accounts),
                    "backends": {
                        account_id: dict(per_account.items())
                        for account_id, per_account in list(s3_backends.items())
                    },
                }
                pickler = _BlobPickler(buf, self.blob_dir)
                pickler.dump(state)
            try:
                _write_durably(self.state_path, buf.getvalue())
                _fsync_dir(self.dir)
                _fsync_dir(self.blob_dir)
            except BaseException:
                with self.cond:
                    self.done_seq = max(self.done_seq, seq)
                    self.cond.notify_all()
                raise
            with self.cond:
                self.done_seq = max(self.done_seq, seq)
                self.ok_seq = max(self.ok_seq, seq)
                self.cond.notify_all()
            # Bodies no longer referenced (deleted or overwritten objects, finished multipart parts).
            for name in os.listdir(self.blob_dir):
                if name not in pickler.used and ".tmp-" not in name:
                    try:
                        os.unlink(os.path.join(self.blob_dir, name))
                    except FileNotFoundError:
                        pass

    def wait_saved(self, seq):
        """True once write number seq is on disk, False if the save that covered it failed."""
        with self.cond:
            while self.done_seq < seq:  # ok_seq <= done_seq
                self.cond.wait()
            return self.ok_seq >= seq

    def saver_loop(self):
        while True:
            with self.cond:
                while self.done_seq >= self.seq:
                    self.cond.wait()
            try:
                self.save()
            except Exception as exc:  # answered as 500 to the waiting writers; retried on the next write
                log(f"ERROR: saving the S3 state to {self.state_path} failed: {exc!r}")
                time.sleep(0.5)


def _s3_error(start_response, status, code, message, path):
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(path)}</Resource><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    ).encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


class StandIn:
    """WSGI front of moto: health endpoints, request filtering, durable writes."""

    def __init__(self, app, store, access_key):
        self.app = app
        self.store = store
        self.access_key = access_key

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith("/minio/health/"):  # what `mc ready` and MinIO's probes ask
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        if path.startswith("/moto-api"):
            return _s3_error(start_response, "403 Forbidden", "AccessDenied", "moto-api is disabled", path)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth:
            if "X-Amz-Credential=" in environ.get("QUERY_STRING", ""):
                message = "Presigned URLs are not supported by the CI stand-in"
            else:
                message = "Anonymous requests are not allowed"
            return _s3_error(start_response, "403 Forbidden", "AccessDenied", message, path)
        scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
        if not auth.startswith("AWS4-HMAC-SHA256 ") or len(scope) < 5:
            return _s3_error(start_response, "400 Bad Request", "AuthorizationHeaderMalformed",
                             "Only AWS Signature Version 4 is supported", path)
        if scope[-2] != "s3":
            return _s3_error(start_response, "400 Bad Request", "InvalidRequest",
                             f"Only the S3 API is served (got {scope[-2]!r})", path)
        if scope[0] != self.access_key:
            return _s3_error(start_response, "403 Forbidden", "InvalidAccessKeyId",
                             "The Access Key Id you provided does not exist in our records.", path)
        if method not in MUTATING:
            return self.app(environ, start_response)

        captured = []

        def capture(status, headers, exc_info=None):
            captured[:] = [status, headers]
            return lambda data: None  # the real one is called below, once the write is on disk

        with self.store.lock:
            if self.store.closed:
                return _s3_error(start_response, "503 Service Unavailable", "ServiceUnavailable",
                                 "Server is shutting down", path)
            result = self.app(environ, capture)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            seq = self.store.mark_dirty()
        if not self.store.wait_saved(seq):
            return _s3_error(start_response, "500 Internal Server Error", "InternalError",
                             "Could not persist the write", path)
        start_response(*captured)
        return [body]


class QuietHealthHandler(WSGIRequestHandler):
    """Logs requests as moto's server does, except the healthcheck's probe every few seconds."""

    def log_request(self, code="-", size="-"):
        if getattr(self, "path", "").startswith("/minio/health/"):
            return
        super().log_request(code, size)


def parse_address(address):
    host, _, port = address.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def main(argv):
    parser = argparse.ArgumentParser(prog="minio server",
                                     description="CI stand-in for `minio server` (moto S3 backend)")
    parser.add_argument("dirs", nargs="+", metavar="DIR")
    parser.add_argument("--address", default=os.environ.get("MINIO_ADDRESS", ":9000"))
    parser.add_argument("--console-address", default=os.environ.get("MINIO_CONSOLE_ADDRESS"),
                        help="accepted for compatibility; no console is served")
    args = parser.parse_args(argv)
    if len(args.dirs) != 1:
        parser.error("the stand-in serves exactly one DIR (no erasure sets)")
    data_dir = os.path.abspath(args.dirs[0])

    user = os.environ.get("MINIO_ROOT_USER") or "minioadmin"
    password = os.environ.get("MINIO_ROOT_PASSWORD") or "minioadmin"
    if len(user) < 3 or len(password) < 8:  # MinIO refuses these too
        log("ERROR: MINIO_ROOT_USER needs at least 3 characters and MINIO_ROOT_PASSWORD at least 8")
        return 1
    if "/" in user or "," in user:
        log("ERROR: MINIO_ROOT_USER must not contain '/' or ','")
        return 1

    try:
        store = Store(data_dir)
    except OSError as exc:
        log(f"ERROR: cannot use {data_dir} for data: {exc}")
        return 1
    try:
        buckets = store.load()
    except Exception as exc:
        log(f"ERROR: cannot read the saved S3 state {store.state_path}: {exc!r}; refusing to start empty")
        return 1

    host, port = parse_address(args.address)
    app = StandIn(DomainDispatcherApplication(create_backend_app), store, user)
    httpd = make_server(host, port, app, threaded=True, request_handler=QuietHealthHandler)
    threading.Thread(target=store.saver_loop, name="saver", daemon=True).start()

    stop = threading.Event()
    received = []

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serving = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    serving.start()

    addresses = [f"http://{host}:{port}"]
    if host == "0.0.0.0":  # as MinIO, show the container's own address and loopback
        try:
            own = socket.gethostbyname(socket.gethostname())
        except OSError:
            own = "0.0.0.0"
        addresses = [f"http://{a}:{port}" for a in dict.fromkeys([own, "127.0.0.1"])]
    console = f"not served (--console-address {args.console_address} accepted and ignored)" \
        if args.console_address else "not served"
    log(f"MinIO stand-in for CI: moto {moto.__version__} S3 backend (not MinIO)")
    log(f"API: {'  '.join(addresses)}")
    log(f"Data: {data_dir} (state in {store.dir}, {buckets} bucket(s) loaded)")
    log(f"Console: {console}")
    log(f"Credentials: only the access key MINIO_ROOT_USER={user} (signatures not checked)")

    while not stop.wait(1.0):
        if not serving.is_alive():
            log("ERROR: the HTTP server stopped")
            return 1
    log(f"Exiting on {received[0]}: saving the S3 state")
    threading.Thread(target=httpd.shutdown, daemon=True).start()
    with store.lock:
        store.closed = True  # no write can start after the final save
    store.save()
    log(f"Saved to {store.state_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The tracking stack as plain processes on this machine: `stack up`, `stack status`, `stack down`.

By default one MLflow server on 127.0.0.1 keeps runs in SQLite and artifacts in a local folder,
served through the server (`--serve-artifacts`) the way the node's stack serves them from the
object store. The backend store and artifact destination are options, so the same command runs
the node's topology (PostgreSQL and an S3 endpoint) when given those URIs.

Open by default: it listens on 127.0.0.1 only. With `auth` it runs MLflow's auth app, as the
node's stack does: the admin account from an env file (`mlflow-auth.env` in the state dir unless
given), accounts in `auth.db` beside it, and no permission for users added later.

With `public_address` the server takes the options the node's Compose file gives it (its allowed
hosts and CORS origin among them), filled in for that address as `credentials.py write --address`
fills them on the node: a browser that opens `http://<public address>:<port>` (a name a test maps
onto this loopback listener) meets what it meets at the node's floating IP.

What is running is recorded in `<state dir>/stack.json`; the server's output goes to
`<state dir>/mlflow-server.log`. `down` stops the server and every process it started, and
keeps the data.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chi_helpers import compose_file, credentials
from chi_helpers.local import object_store as local_object_store
from chi_helpers.local import processes
from chi_helpers.progress import Clock

STATE_FILE = "stack.json"
LOG_FILE = "mlflow-server.log"
AUTH_ENV_FILE = "mlflow-auth.env"
AUTH_CONFIG = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{database}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 300
"""  # the cache as in docker/mlflow-auth.ini, which says why
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class StackError(RuntimeError):
    """The stack could not be started or found; the message says why and what to do."""


@dataclass
class Stack:
    """One running MLflow server, as recorded in the state file."""

    url: str
    pid: int
    host: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    log: str
    started_at: float
    env: dict = field(default_factory=dict)  # extra environment the server was given (secrets left out)
    auth_file: str = ""  # with the auth app: the env file holding its admin account
    public_address: str = ""  # where a browser opens it, when it runs the Compose file's options
    flags: list = field(default_factory=list)  # the options beyond where it listens and what it stores

    @property
    def public_url(self) -> str:
        """The address a browser opens: the public one when there is one."""
        return f"http://{self.public_address}:{self.port}" if self.public_address else self.url

    @property
    def health_url(self) -> str:
        return self.url.rstrip("/") + "/health"

    def is_healthy(self) -> bool:
        return processes.is_running(self.pid) and processes.http_ok(self.health_url)


def _state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def read_state(state_dir: str | os.PathLike) -> Stack | None:
    path = _state_path(Path(state_dir))
    if not path.exists():
        return None
    return Stack(**json.loads(path.read_text()))


def _write_state(state_dir: Path, stack: Stack) -> None:
    path = _state_path(state_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(stack), indent=2))
    tmp.replace(path)


def server_command(host: str, port: int, backend_store_uri: str, artifacts_destination: str, workers: int = 1,
                   auth: bool = False, flags: list[str] | None = None) -> list[str]:
    """`mlflow server` listening at host:port on these stores; `flags` (the Compose file's) in place of
    the defaults for everything else."""
    if flags is None:
        flags = [*(["--app-name=basic-auth"] if auth else []), "--serve-artifacts"]
    stores = ["--backend-store-uri", backend_store_uri]
    if compose_file.flag_value(flags, "--artifacts-destination") is None:
        stores += ["--artifacts-destination", artifacts_destination]
    return [sys.executable, "-m", "mlflow", "server", *flags, "--host", host, "--port", str(port),
            "--workers", str(workers), *stores]


def node_flags(public_address: str, port: int) -> list[str]:
    """The MLflow options of the node's Compose file, filled in for a node at `public_address` whose MLflow
    listens on `port` (the sign-in's variables are passed in the environment, not here)."""
    values = {**credentials.address_values(public_address, port), **{key: "set" for key in credentials.REQUIRED
                                                                        if key not in credentials.ADDRESS_KEYS}}
    return compose_file.mlflow_server_flags(values)


def up(
    state_dir: str | os.PathLike,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    env: dict | None = None,
    timeout: float = 120.0,
    clock: Clock | None = None,
    object_store: bool = False,
    auth: bool = False,
    auth_file: str | os.PathLike | None = None,
    public_address: str | None = None,
    flags: list[str] | None = None,
) -> Stack:
    """Start the MLflow server in the background and wait until /health answers.

    Reuses the server already recorded in `state_dir` when it is healthy. `env` adds variables
    to the server's environment. `object_store` starts (or reuses) a local S3 endpoint and keeps
    the artifacts in its bucket, as the node's stack keeps them in MinIO. A `postgresql://`
    backend's database is made when it does not exist yet. `auth` (or an `auth_file`) runs the
    auth app; the sign-in is read from `auth_file`, made there when missing. `public_address` runs the
    Compose file's MLflow options for a node at that address (they sign in, so `auth` follows);
    `flags` gives the options outright.
    """
    state_dir = Path(state_dir).resolve()
    clock = clock or Clock()
    state_dir.mkdir(parents=True, exist_ok=True)
    if object_store:
        # Before the server: a server restarted on the same store finds its artifacts there.
        store = local_object_store.up(state_dir, clock=clock)
        env = {**store.client_env(), **(env or {})}
        artifacts_destination = artifacts_destination or f"s3://{store.bucket}/"
    if public_address and flags is None:
        flags = node_flags(public_address, port)
    if flags is not None:
        auth = auth or compose_file.flag_value(flags, "--app-name") == "basic-auth"
        if object_store is False and (compose_file.flag_value(flags, "--artifacts-destination") or "").startswith("s3://"):
            raise StackError("these MLflow options keep artifacts in an S3 bucket: start the stack with object_store "
                             "(`--object-store`), as the node runs MinIO beside MLflow")
    auth = auth or auth_file is not None
    if auth:
        auth_file = Path(auth_file or state_dir / AUTH_ENV_FILE).resolve()
    current = read_state(state_dir)
    if current is not None:
        if current.is_healthy():
            if bool(current.auth_file) != auth:
                raise StackError(
                    f"The MLflow server at {current.url} runs {'with' if current.auth_file else 'without'} sign-in; "
                    f"stop it first (`python -m chi_helpers stack down --state-dir {state_dir}`) to start it "
                    f"{'with' if auth else 'without'}."
                )
            clock.say(f"MLflow server already running at {current.url} (pid {current.pid}): reusing it")
            return current
        # Recorded but gone (machine restarted, process killed): clear what is left and start anew.
        processes.stop_tree(current.pid, timeout=5)
        _state_path(state_dir).unlink()

    if not processes.port_is_free(host, port):
        raise StackError(
            f"Port {port} on {host} is already in use by another program, so the MLflow server cannot "
            f"listen there. Choose another port (--port {port + 1}) or stop what listens on it "
            f"(`ss -ltnp 'sport = :{port}'` shows it)."
        )
    backend_store_uri = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    if backend_store_uri.startswith("postgresql"):
        from chi_helpers.local import postgres

        if postgres.ensure_database(backend_store_uri):
            clock.say(f"made database {backend_store_uri.rsplit('/', 1)[-1]}")
    if artifacts_destination is None:
        artifacts_destination = str(state_dir / "artifacts")
        Path(artifacts_destination).mkdir(exist_ok=True)
    log = state_dir / LOG_FILE
    server_env = {
        **os.environ,
        # The series uses no server-side jobs; without them the server starts in half the time.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        **(env or {}),
        **(_auth_env(state_dir, auth_file) if auth else {}),
    }
    command = server_command(host, port, backend_store_uri, artifacts_destination, auth=auth, flags=flags)
    clock.say(f"starting MLflow server on {host}:{port} (log: {log})")
    proc = processes.start_background(command, log, env=server_env)
    stack = Stack(
        url=f"http://{host}:{port}",
        pid=proc.pid,
        host=host,
        port=port,
        backend_store_uri=backend_store_uri,
        artifacts_destination=artifacts_destination,
        log=str(log),
        started_at=time.time(),
        env={k: v for k, v in (env or {}).items() if "SECRET" not in k and "PASSWORD" not in k and "KEY_ID" not in k},
        auth_file=str(auth_file) if auth else "",
        public_address=public_address or "",
        flags=list(flags or []),
    )
    # Recorded before it is ready, so `down` can stop a server that hangs while starting.
    _write_state(state_dir, stack)

    deadline = time.monotonic() + timeout
    next_note = 0.0
    while not processes.http_ok(stack.health_url, timeout=1):
        if proc.poll() is not None:
            _give_up(state_dir, stack, f"the server exited with status {proc.returncode} before answering")
        if time.monotonic() > deadline:
            _give_up(state_dir, stack, f"no answer from {stack.health_url} after {timeout:.0f} s")
        if clock.elapsed() >= next_note:
            clock.say(f"waiting for {stack.health_url} ...")
            next_note = clock.elapsed() + 5
        time.sleep(0.25)
    clock.say(f"MLflow server ready at {stack.url}" + (f", for a browser at {stack.public_url}" if public_address else ""))
    if auth:
        # The user name only: the password stays in the file.
        clock.say(f"sign in as {credentials.read(auth_file)['MLFLOW_TRACKING_USERNAME']}; "
                  f"the password is MLFLOW_TRACKING_PASSWORD in {auth_file}")
    return stack


def _auth_env(state_dir: Path, auth_file: Path) -> dict[str, str]:
    """The auth app's configuration: its own file in the state dir, the admin account from `auth_file`."""
    values = credentials.write_sign_in(auth_file)
    config = state_dir / "auth.ini"
    config.write_text(AUTH_CONFIG.format(database=state_dir / "auth.db"))
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": values["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": values["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": values["MLFLOW_FLASK_SERVER_SECRET_KEY"],
    }


def _give_up(state_dir: Path, stack: Stack, reason: str) -> None:
    processes.stop_tree(stack.pid, timeout=5)
    _state_path(state_dir).unlink(missing_ok=True)
    raise StackError(
        f"The MLflow server did not come up: {reason}.\n"
        f"Last lines of {stack.log}:\n{processes.tail(stack.log)}"
    )


def status(state_dir: str | os.PathLike) -> dict:
    """What is recorded and whether it answers."""
    stack = read_state(state_dir)
    if stack is None:
        return {"running": False, "state_dir": str(state_dir)}
    return {
        **asdict(stack),
        "running": processes.is_running(stack.pid),
        "healthy": stack.is_healthy(),
        "state_dir": str(state_dir),
    }


def down(state_dir: str | os.PathLike, clock: Clock | None = None) -> bool:
    """Stop the recorded server with all its children, then the local S3 endpoint if there is one.

    The database and the log stay (the S3 endpoint keeps objects in memory only). False when
    nothing was recorded.
    """
    clock = clock or Clock()
    stack = read_state(state_dir)
    store_stopped = local_object_store.down(state_dir) if stack is None else False
    if stack is None:
        clock.say(f"no local stack recorded in {state_dir}" + (": stopped its S3 endpoint" if store_stopped else ": nothing to stop"))
        return store_stopped
    stopped = processes.stop_tree(stack.pid)
    _state_path(Path(state_dir)).unlink(missing_ok=True)
    if local_object_store.down(state_dir):
        clock.say("stopped the S3 endpoint")
    clock.say(f"stopped the MLflow server at {stack.url} ({stopped} process(es)); data kept in {state_dir}")
    return True

"""A local S3-compatible endpoint (moto's standalone server) standing in for the node's MinIO.

It keeps objects in memory: they last as long as the process, which `stack down` stops. Its
state (address, process, keys) is recorded in `<state dir>/object-store.json`, mode 600.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from chi_helpers.local import processes
from chi_helpers.progress import Clock

STATE_FILE = "object-store.json"
BUCKET = "mlflow-artifacts"


@dataclass
class ObjectStore:
    url: str
    pid: int
    log: str
    bucket: str
    access_key: str
    secret_key: str

    def client_env(self) -> dict[str, str]:
        """What an S3 client (the MLflow server, boto3) needs to reach this store."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def read_state(state_dir: str | os.PathLike) -> ObjectStore | None:
    path = Path(state_dir) / STATE_FILE
    return ObjectStore(**json.loads(path.read_text())) if path.exists() else None


def up(state_dir: str | os.PathLike, port: int | None = None, clock: Clock | None = None,
       timeout: float = 60) -> ObjectStore:
    """Start the endpoint and make the bucket; reuse the recorded one while it answers."""
    clock = clock or Clock()
    state_dir = Path(state_dir).resolve()
    current = read_state(state_dir)
    if current and processes.is_running(current.pid) and processes.http_ok(current.url + "/moto-api/"):
        clock.say(f"object store already running at {current.url}: reusing it")
        return current
    port = port or processes.free_port()
    log = state_dir / "object-store.log"
    proc = processes.start_background([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    store = ObjectStore(url=f"http://127.0.0.1:{port}", pid=proc.pid, log=str(log), bucket=BUCKET,
                        access_key=secrets.token_hex(10), secret_key=secrets.token_urlsafe(30))
    path = state_dir / STATE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(store), out, indent=2)
    clock.say(f"starting the S3 endpoint on {store.url} (log: {log})")
    deadline = time.monotonic() + timeout
    while not processes.http_ok(store.url + "/moto-api/"):
        if proc.poll() is not None or time.monotonic() > deadline:
            processes.stop_tree(proc.pid, timeout=5)
            path.unlink(missing_ok=True)
            raise RuntimeError(f"the S3 endpoint did not come up; last lines of {log}:\n{processes.tail(log)}")
        time.sleep(0.2)
    store.s3().create_bucket(Bucket=store.bucket)
    clock.say(f"S3 endpoint ready with bucket {store.bucket}")
    return store


def down(state_dir: str | os.PathLike) -> bool:
    store = read_state(state_dir)
    if store is None:
        return False
    processes.stop_tree(store.pid)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return True

"""Where a tracking stack keeps its history: the backend database, the auth app's database (when it
asks for a sign-in) and the artifact store. Read from the local stack's state folder, or, inside the
node's `archive` container, from the environment the Compose file gives it (the MLflow server's own).
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from pathlib import Path

from chi_helpers.archive import stores


@dataclass
class Location:
    backend_uri: str
    artifacts: str  # the server's --artifacts-destination
    auth_uri: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # what an S3 client needs to reach the bucket

    def store(self):
        return stores.store_for(self.artifacts, self.env)


def from_state_dir(state_dir: str | os.PathLike) -> Location:
    """The local stack in `state_dir`: as recorded while it runs, or its default files once stopped."""
    from chi_helpers.local import object_store, stack

    state_dir = Path(state_dir).resolve()
    recorded = stack.read_state(state_dir)
    auth_db = state_dir / "auth.db"
    if recorded is not None:
        env = {}
        if recorded.artifacts_destination.startswith("s3://"):
            store = object_store.read_state(state_dir)
            env = store.client_env() if store else {}
        return Location(recorded.backend_store_uri, recorded.artifacts_destination,
                        f"sqlite:///{auth_db}" if recorded.auth_file else None, env)
    database = state_dir / "mlflow.db"
    if not database.exists():
        raise FileNotFoundError(
            f"no tracking history in {state_dir}: neither a running stack (stack.json) nor its database "
            f"(mlflow.db). Name the folder `stack up` used with --state-dir."
        )
    return Location(f"sqlite:///{database}", str(state_dir / "artifacts"),
                    f"sqlite:///{auth_db}" if auth_db.exists() else None)


def from_environment(env: dict[str, str] | None = None) -> Location:
    """Inside the node's `archive` container: the same variables the MLflow server container has."""
    env = dict(os.environ if env is None else env)
    missing = [k for k in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION") if not env.get(k)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} not set: run this through the Compose file's `archive` service")
    auth_uri = None
    config = env.get("MLFLOW_AUTH_CONFIG_PATH")
    if config and Path(config).exists():
        parser = configparser.ConfigParser()
        parser.read(config)
        auth_uri = parser.get("mlflow", "database_uri", fallback=None)
    return Location(env["MLFLOW_BACKEND_STORE_URI"], env["MLFLOW_ARTIFACTS_DESTINATION"], auth_uri,
                    {k: v for k, v in env.items() if k.startswith(("AWS_", "MLFLOW_S3_"))})

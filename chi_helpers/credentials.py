"""Per-deployment secrets for the node's tracking stack, in an env file only its owner can read.

Standard library only: it runs on the node as `python3 chi_helpers/credentials.py write FILE --address IP`
before every `docker compose --env-file FILE ... up`. The secrets in a file that exists are never
changed: PostgreSQL and the object store keep the credentials they were first started with, so new
ones would lock the stack out of its own data. What is rewritten each time is what follows from the
node's address (`ADDRESS_KEYS`): a new floating IP must not leave MLflow refusing the browser. The one
thing added to an older file is MLflow's sign-in, when the file predates it: no stored data depends
on it yet.

The MLflow admin account's variables are named as the MLflow client reads them
(`MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD`), so the Jupyter container takes exactly
those two lines of this file and nothing else.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# What follows from the node's public address, rewritten at every `write`: the Host headers MLflow
# answers (`--allowed-hosts`) and the page origin whose requests it takes (`--cors-allowed-origins`).
ADDRESS_KEYS = ("MLFLOW_ALLOWED_HOSTS", "MLFLOW_CORS_ALLOWED_ORIGINS")
# Every variable the tracking stack's Compose file requires (`${VAR:?...}`).
REQUIRED = (
    "POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", *ADDRESS_KEYS,
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
)
# MLflow's sign-in: the admin account the auth app creates on its first start, and the key that
# signs its session cookies and forms.
SIGN_IN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
ADMIN_USERNAME = "admin"


def allowed_hosts(address: str, port: int = 8000) -> str:
    """The Host headers the MLflow server answers: the node's public address and the node itself."""
    hosts = [f"{address}:{port}", address, f"localhost:{port}", f"127.0.0.1:{port}", f"mlflow:{port}"]
    return ",".join(dict.fromkeys(hosts))


def cors_origins(address: str, port: int = 8000) -> str:
    """The origin of the MLflow UI as a browser opens it at the node's public address. MLflow 3.17 refuses
    the UI's own POSTs (runs search, Compare, the registry) from any other origin but localhost's
    (mlflow/server/security_utils.py should_block_cors_request): without it the runs table stays empty."""
    return f"http://{address}:{port}"


def address_values(address: str, port: int = 8000) -> dict[str, str]:
    """What the env file says of the node's address (`ADDRESS_KEYS`)."""
    if not address or any(c in address for c in ",/ \t\n=$"):
        raise ValueError(f"--address {address!r} is not a host name or IP address: give the node's floating IP")
    return {"MLFLOW_ALLOWED_HOSTS": allowed_hosts(address, port), "MLFLOW_CORS_ALLOWED_ORIGINS": cors_origins(address, port)}


def sign_in() -> dict[str, str]:
    """A fresh MLflow admin password and secret key. The user name is fixed: a student types it."""
    return {
        "MLFLOW_TRACKING_USERNAME": ADMIN_USERNAME,
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }


def generate(address: str) -> dict[str, str]:
    """Fresh random credentials; the services' user names random too, so nothing about them is guessable."""
    return {
        "POSTGRES_USER": f"mlflow_{secrets.token_hex(4)}",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "MINIO_ROOT_USER": f"minio{secrets.token_hex(6)}",
        "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(24),
        **address_values(address),
        **sign_in(),
    }


def read(path: str | os.PathLike) -> dict[str, str]:
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def _lines(values: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


def write(path: str | os.PathLike, address: str) -> tuple[dict[str, str], bool]:
    """Create the env file with fresh credentials unless it exists; returns (values, created).

    In an existing file the secrets stay as they are and the address lines are made to match `address`.
    A file made before MLflow had a sign-in gets one added.
    """
    path = Path(path)
    wanted = address_values(address)
    if path.exists():
        values = read(path)
        missing = [k for k in REQUIRED if not values.get(k) and k not in ADDRESS_KEYS]
        added = {}
        if missing and set(missing) <= set(SIGN_IN) and not any(k in values for k in SIGN_IN):
            added = sign_in()
        elif missing:
            raise ValueError(
                f"{path} exists but lacks {', '.join(missing)}; it was not changed. Add them by hand, "
                "or, if this stack has no data yet, remove the file and run this again."
            )
        if added or any(values.get(key) != value for key, value in wanted.items()):
            _rewrite(path, wanted, added)
        return {**values, **added, **wanted}, False
    values = generate(address)
    _create(path, "# Made by chi_helpers.credentials for this deployment. Keep it private; never commit it.\n"
            + _lines(values))
    return values, True


def _rewrite(path: Path, replaced: dict[str, str], added: dict[str, str]) -> None:
    """The file with the `replaced` keys' lines changed (or appended) and `added` appended, every other
    line as it was; written beside it and renamed over it, so a failure leaves the old file whole."""
    lines, seen = [], set()
    for line in path.read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in replaced:
            if key not in seen:
                lines.append(f"{key}={replaced[key]}")
            seen.add(key)
        else:
            lines.append(line)
    new = {key: value for key, value in replaced.items() if key not in seen}
    if new:
        lines.append("# Follows from the node's address; rewritten at every `write`.")
        lines += [f"{key}={value}" for key, value in new.items()]
    if added:
        lines.append("# Added for MLflow's sign-in (the auth app's admin account).")
        lines += [f"{key}={value}" for key, value in added.items()]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    temporary.unlink(missing_ok=True)
    _create(temporary, "\n".join(lines) + "\n")
    os.replace(temporary, path)


def write_sign_in(path: str | os.PathLike) -> dict[str, str]:
    """The MLflow sign-in alone, for a server without the rest of the stack (`stack up --auth`).

    Kept when the file exists: the auth database holds the admin account it was first made with.
    """
    path = Path(path)
    if path.exists():
        values = read(path)
        missing = [k for k in SIGN_IN if not values.get(k)]
        if missing:
            raise ValueError(f"{path} exists but lacks {', '.join(missing)}; it was not changed. "
                             "Remove it and the auth database beside it to start over.")
        return values
    values = sign_in()
    _create(path, "# MLflow's sign-in for this local server. Keep it private; never commit it.\n" + _lines(values))
    return values


def _create(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never write over a file that appeared meanwhile; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="credentials.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write"])
    parser.add_argument("path", help="the env file, e.g. ~/mlflow-stack.env")
    parser.add_argument("--address", required=True,
                        help="the node's public address (its floating IP), as a browser opens MLflow there")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            before = read(args.path) if Path(args.path).exists() else {}
            values, created = write(args.path, args.address)
            if created:
                print(f"wrote new credentials in {args.path} (mode 600)")
            elif any(k in SIGN_IN for k in set(values) - set(before)):
                print(f"kept the existing credentials in {args.path} and added MLflow's sign-in (mode 600)")
            else:
                print(f"kept the existing credentials in {args.path} (mode 600)")
            if before and any(before.get(k) != values[k] for k in ADDRESS_KEYS):
                print(f"the node's address is now {args.address}: MLflow's allowed hosts and origin follow it")
            # The name only: the password stays in the file.
            print(f"MLflow sign-in: user {values['MLFLOW_TRACKING_USERNAME']}, "
                  f"password in {args.path} (MLFLOW_TRACKING_PASSWORD)")
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-deployment secrets for the node's tracking stack, in an env file only its owner can read.

Standard library only: it runs on the node as `python3 chi_helpers/credentials.py write FILE --address IP`
before `docker compose --env-file FILE ... up`. A file that exists is never rewritten: PostgreSQL
and the object store keep the credentials they were first started with, so new ones would lock
the stack out of its own data.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# Every variable the tracking stack's Compose file requires (`${VAR:?...}`).
REQUIRED = (
    "POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MLFLOW_ALLOWED_HOSTS",
)


def allowed_hosts(address: str, port: int = 8000) -> str:
    """The Host headers the MLflow server answers: the node's public address and the node itself."""
    hosts = [f"{address}:{port}", address, f"localhost:{port}", f"127.0.0.1:{port}", f"mlflow:{port}"]
    return ",".join(dict.fromkeys(hosts))


def generate(address: str) -> dict[str, str]:
    """Fresh random credentials; user names random too, so nothing about them is guessable."""
    return {
        "POSTGRES_USER": f"mlflow_{secrets.token_hex(4)}",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "MINIO_ROOT_USER": f"minio{secrets.token_hex(6)}",
        "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_ALLOWED_HOSTS": allowed_hosts(address),
    }


def read(path: str | os.PathLike) -> dict[str, str]:
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def write(path: str | os.PathLike, address: str) -> tuple[dict[str, str], bool]:
    """Create the env file with fresh credentials unless it exists; returns (values, created)."""
    path = Path(path)
    if path.exists():
        values = read(path)
        missing = [k for k in REQUIRED if not values.get(k)]
        if missing:
            raise ValueError(
                f"{path} exists but lacks {', '.join(missing)}; it was not changed. Add them by hand, "
                "or, if this stack has no data yet, remove the file and run this again."
            )
        return values, False
    values = generate(address)
    body = "# Made by chi_helpers.credentials for this deployment. Keep it private; never commit it.\n"
    body += "".join(f"{k}={v}\n" for k, v in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: never write over a file that appeared meanwhile; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(body)
    return values, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="credentials.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["write", "show-console"])
    parser.add_argument("path", help="the env file, e.g. ~/mlflow-stack.env")
    parser.add_argument("--address", default="127.0.0.1", help="write: the node's public address")
    args = parser.parse_args(argv)
    try:
        if args.action == "write":
            _, created = write(args.path, args.address)
            print(f"{'wrote new' if created else 'kept the existing'} credentials in {args.path} (mode 600)")
        else:
            values = read(args.path)
            print(f"object store console user:     {values['MINIO_ROOT_USER']}")
            print(f"object store console password: {values['MINIO_ROOT_PASSWORD']}")
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

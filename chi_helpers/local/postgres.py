"""The PostgreSQL database behind a `postgresql+psycopg://` backend store URI: made when missing.

The driver is psycopg 3, named in the URI: SQLAlchemy's default driver for a bare `postgresql://`
differs between its versions.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def _admin_uri(uri: str) -> tuple[str, str]:
    """(a URI to the server's `postgres` database, the database name `uri` names)."""
    scheme, rest = uri.split("://", 1)
    parts = urlsplit(f"postgresql://{rest}")  # drop SQLAlchemy's "+driver" for the driver itself
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"{uri} names no database: add one, e.g. postgresql://user@host:5432/mlflowdb")
    return urlunsplit(parts._replace(path="/postgres")), name


def ensure_database(uri: str) -> bool:
    """Create the database `uri` names if it does not exist; True when it was created."""
    import psycopg
    from psycopg import sql

    admin, name = _admin_uri(uri)
    try:
        # autocommit: CREATE DATABASE cannot run inside a transaction.
        connection = psycopg.connect(admin, autocommit=True)
    except psycopg.OperationalError as error:
        raise RuntimeError(f"cannot reach PostgreSQL for {uri}: {error}".strip()) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone():
                return False
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    finally:
        connection.close()


def drop_database(uri: str) -> None:
    import psycopg
    from psycopg import sql

    admin, name = _admin_uri(uri)
    connection = psycopg.connect(admin, autocommit=True)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        connection.close()

"""An MLflow database, table by table: read in one snapshot, written back row by row.

The rows go into the archive as JSON lines, one file per table, so that a history tracked in the
node's PostgreSQL comes back in a laptop's SQLite and the other way round (a `pg_dump` script loads
into PostgreSQL only, and only into the same major version or a newer one). The tables are MLflow's
own, read as they are (SQLAlchemy reflects them), so a table a later MLflow adds travels too.

Writing back never overwrites: a row whose key is already in the target is either the same thing
(its unique columns, or all its columns, agree: the `Default` experiment, the stack's own admin, a
run merged twice) and is left as it is, or a clash, which is reported and skipped together with every
row that hangs from it through a foreign key.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

BATCH = 2000
VERSION_TABLES = ("alembic_version", "alembic_version_auth")  # the schema's revision, not data


# --- values ------------------------------------------------------------------------------------

def encode(value):
    """A column's value as JSON: floats that JSON lacks, bytes and times are tagged."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, (bytes, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, (dict, list)):
        return {"$json": value}
    return value


def decode(value):
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$float":
            return float(inner)
        if tag == "$bytes":
            return base64.b64decode(inner)
        if tag == "$datetime":
            return datetime.datetime.fromisoformat(inner)
        if tag == "$date":
            return datetime.date.fromisoformat(inner)
        if tag == "$decimal":
            return decimal.Decimal(inner)
        if tag == "$json":
            return inner
    return value


def _fit(column: sa.Column, value):
    """A value as the target column takes it (SQLite keeps booleans as 0/1, JSON as text)."""
    if value is None:
        return None
    kind = column.type
    if isinstance(kind, sa.Boolean) and isinstance(value, int):
        return bool(value)
    if isinstance(kind, sa.Integer) and isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)) and not isinstance(kind, sa.JSON):
        return json.dumps(value)
    return value


# --- reading -----------------------------------------------------------------------------------

def engine(uri: str) -> sa.Engine:
    return sa.create_engine(uri, poolclass=sa.pool.NullPool)


def revision(connection: sa.Connection) -> str | None:
    """The schema's Alembic revision (MLflow's tables or the auth app's), None when there is none."""
    names = set(sa.inspect(connection).get_table_names())
    for table in VERSION_TABLES:
        if table in names:
            return connection.execute(sa.text(f"SELECT version_num FROM {table}")).scalar()
    return None


def reflect(connection: sa.Connection) -> list[sa.Table]:
    """The data tables, parents before children (the order rows can be inserted in)."""
    metadata = sa.MetaData()
    metadata.reflect(connection)
    return [t for t in metadata.sorted_tables if t.name not in VERSION_TABLES]


@contextmanager
def snapshot(uri: str) -> Iterator[sa.Connection]:
    """A connection that sees the whole database at one moment, while the server goes on writing."""
    with engine(uri).connect() as connection:
        if connection.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def rows(connection: sa.Connection, table: sa.Table) -> Iterator[dict]:
    result = connection.execution_options(stream_results=True, yield_per=BATCH).execute(sa.select(table))
    for row in result.mappings():
        yield dict(row)


def keys_of(fk: sa.ForeignKeyConstraint) -> tuple[list[str], list[str]]:
    """(the child's columns, the parent's columns) of a foreign key, in matching order."""
    return [e.parent.name for e in fk.elements], [e.column.name for e in fk.elements]


@dataclass
class Dropped:
    """Rows left out, per table, and what their children's foreign keys must not point to."""

    rows: dict[str, list[dict]] = field(default_factory=dict)
    # (parent table, its referred columns) -> the values of those columns in the rows left out
    keys: dict[tuple[str, tuple[str, ...]], set[tuple]] = field(default_factory=dict)

    def add(self, table: sa.Table, row: dict) -> None:
        self.rows.setdefault(table.name, []).append(row)
        for (parent, columns), found in self.keys.items():
            if parent == table.name:
                found.add(tuple(row.get(c) for c in columns))

    def _left_out(self, parent: str, columns: tuple[str, ...]) -> set[tuple]:
        if (parent, columns) not in self.keys:  # first asked: index what was left out so far
            self.keys[parent, columns] = {tuple(r.get(c) for c in columns) for r in self.rows.get(parent, [])}
        return self.keys[parent, columns]

    def hangs_from_one(self, table: sa.Table, row: dict) -> bool:
        for fk in table.foreign_key_constraints:
            mine, theirs = keys_of(fk)
            value = tuple(row.get(c) for c in mine)
            if None not in value and value in self._left_out(fk.referred_table.name, tuple(theirs)):
                return True
        return False

    def count(self) -> int:
        return sum(len(v) for v in self.rows.values())


def dump(uri: str, folder: Path, leave_out: Callable[[str, dict], bool] | None = None,
         say: Callable[[str], None] = lambda _: None) -> dict:
    """Write every data table of the database at `uri` as `<folder>/<table>.jsonl`, from one snapshot.

    `leave_out(table, row)` drops rows (and, through foreign keys, their children). Returns
    {"revision", "dialect", "tables": {name: rows written}, "order": [...]}.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    dropped = Dropped()
    with snapshot(uri) as connection:
        found = revision(connection)
        tables = reflect(connection)
        for table in tables:
            count = 0
            with open(folder / f"{table.name}.jsonl", "w") as out:
                for row in rows(connection, table):
                    if (leave_out and leave_out(table.name, row)) or dropped.hangs_from_one(table, row):
                        dropped.add(table, row)
                        continue
                    out.write(json.dumps({k: encode(v) for k, v in row.items()}) + "\n")
                    count += 1
            if not count:
                (folder / f"{table.name}.jsonl").unlink()  # the schema says the table exists; no file needed
            written[table.name] = count
        dialect = connection.dialect.name
    if dropped.count():
        say(f"left out {dropped.count()} row(s): " + ", ".join(f"{t} {len(r)}" for t, r in dropped.rows.items()))
    return {"revision": found, "dialect": dialect, "tables": written, "order": [t.name for t in tables]}


def read_rows(path: Path) -> Iterator[dict]:
    with open(path) as lines:
        for line in lines:
            if line.strip():
                yield {k: decode(v) for k, v in json.loads(line).items()}


# --- writing back ------------------------------------------------------------------------------

@dataclass
class Loaded:
    inserted: dict[str, int] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # the same thing was there already
    clashes: list[str] = field(default_factory=list)  # a different thing under the same key: skipped
    dropped: Dropped = field(default_factory=Dropped)  # the clashes and what hangs from them

    def skipped(self, table: str) -> list[dict]:
        return self.dropped.rows.get(table, [])


def _unique_sets(table: sa.Table) -> list[list[str]]:
    return [[c.name for c in u.columns] for u in table.constraints
            if isinstance(u, sa.UniqueConstraint) and not isinstance(u, sa.PrimaryKeyConstraint)]


def _key(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]


def _describe(table: sa.Table, row: dict) -> str:
    return f"{table.name} " + ", ".join(f"{c}={row.get(c)!r}" for c in _key(table))


def _existing(connection: sa.Connection, table: sa.Table, row: dict, columns: list[str]) -> dict | None:
    condition = sa.and_(*[(table.c[c] == row[c]) if row.get(c) is not None else table.c[c].is_(None) for c in columns])
    found = connection.execute(sa.select(table).where(condition).limit(1)).mappings().first()
    return dict(found) if found else None


def _same(table: sa.Table, ours: dict, theirs: dict) -> bool:
    """Whether a row already in the target is the same thing as the archive's (see the module's note)."""
    uniques = _unique_sets(table)
    if uniques:
        return all(_fit(table.c[c], ours.get(c)) == theirs.get(c) for u in uniques for c in u)
    return all(_fit(table.c[c], ours.get(c)) == theirs.get(c) for c in theirs if c in ours)


def load(connection: sa.Connection, folder: Path, order: Iterable[str] | None = None,
         say: Callable[[str], None] = lambda _: None) -> Loaded:
    """Insert the rows of `<folder>/<table>.jsonl` into the tables the connection's database has.

    Runs inside the caller's transaction, so a failure leaves the target as it was. A table that
    is empty in the target takes its rows in batches; one that is not is checked row by row.
    """
    loaded = Loaded()
    tables = {t.name: t for t in reflect(connection)}
    names = [n for n in (order or tables) if n in tables] + [n for n in tables if n not in set(order or tables)]
    missing = sorted(p.stem for p in folder.glob("*.jsonl") if p.stem not in tables)
    if missing:
        raise ArchiveSchemaError(f"the archive has table(s) this database lacks: {', '.join(missing)}")
    for name in names:
        path = folder / f"{name}.jsonl"
        if not path.exists():
            continue
        table = tables[name]
        empty = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
        batch: list[dict] = []
        count = 0
        for row in read_rows(path):
            unknown = set(row) - set(table.c.keys())
            if unknown:
                raise ArchiveSchemaError(f"table {name} has no column(s) {', '.join(sorted(unknown))}")
            if loaded.dropped.hangs_from_one(table, row):
                loaded.dropped.add(table, row)
                continue
            fitted = {k: _fit(table.c[k], v) for k, v in row.items()}
            if not empty:
                there = _existing(connection, table, fitted, _key(table))
                if there is None:
                    there = next((found for u in _unique_sets(table)
                                  if all(fitted.get(c) is not None for c in u)
                                  for found in [_existing(connection, table, fitted, u)] if found), None)
                if there is not None:
                    if _same(table, row, there):
                        loaded.kept.append(_describe(table, row))
                    else:
                        loaded.clashes.append(_describe(table, row))
                        loaded.dropped.add(table, row)
                    continue
            batch.append(fitted)
            if len(batch) >= BATCH:
                connection.execute(table.insert(), batch)
                count += len(batch)
                batch = []
        if batch:
            connection.execute(table.insert(), batch)
            count += len(batch)
        if count:
            loaded.inserted[name] = count
    _advance_sequences(connection, [tables[n] for n in loaded.inserted])
    return loaded


def _advance_sequences(connection: sa.Connection, tables: list[sa.Table]) -> None:
    """PostgreSQL's counters past the ids just inserted: rows inserted with their own ids do not move
    them, and the next experiment made would be given an id already taken. (SQLite takes max + 1.)"""
    if connection.dialect.name != "postgresql":
        return
    for table in tables:
        key = list(table.primary_key.columns)
        if len(key) != 1 or not isinstance(key[0].type, sa.Integer):
            continue
        quote = connection.dialect.identifier_preparer.quote
        column = key[0].name
        connection.execute(sa.text(
            f"SELECT setval(pg_get_serial_sequence(:table, :column), "
            f"(SELECT COALESCE(MAX({quote(column)}), 0) + 1 FROM {quote(table.name)}), false)"
        ), {"table": quote(table.name), "column": column})


class ArchiveSchemaError(ValueError):
    """The archive's tables do not fit the target's schema."""

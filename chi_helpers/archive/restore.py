"""`stack up --restore FILE`: an archive's history into a running stack, ids and bytes as they were.

Everything that can refuse does so before anything is written: the checksums, the schema versions,
a stack that already holds runs (unless `merge`), the disk. Then the rows go in inside one
transaction per database, the artifacts are copied while it is open, and it commits only when the
files are in place: a failure half-way leaves the database as it was.

With `merge`, the archive's rows go in beside the stack's own; a key the stack already uses for
something else is reported and skipped with what hangs from it (never overwritten), and so are the
artifact files of what was skipped and any file already there.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from chi_helpers.archive import manifest as contents
from chi_helpers.archive import tables
from chi_helpers.archive.location import Location
from chi_helpers.archive.make import MARGIN, artifact_key, describe, human
from chi_helpers.progress import Clock

MIGRATIONS = {"backend": ("mlflow", "store", "db_migrations"), "auth": ("mlflow", "server", "auth", "db", "migrations")}


def _scripts(part: str):
    """The installed MLflow's Alembic scripts for `part` (the tracking tables, or the auth app's)."""
    import importlib.util

    from alembic.script import ScriptDirectory

    package = Path(importlib.util.find_spec("mlflow").origin).parent
    return ScriptDirectory(str(package.joinpath(*MIGRATIONS[part][1:])))


def known_revisions(part: str) -> set[str]:
    """Every schema revision the installed MLflow knows for `part`."""
    return {script.revision for script in _scripts(part).walk_revisions()}


def head_revision(part: str) -> str:
    return _scripts(part).get_current_head()


def preflight(manifest: dict) -> None:
    """The schema checks that need no stack: against what the installed MLflow makes (`stack up` runs
    them before it starts a server, so a refused archive leaves no new stack behind)."""
    import mlflow

    for part in manifest.get("schema", {}):
        contents.check_schema(manifest, part, head_revision(part), known_revisions(part), mlflow.__version__)


def holdings(connection: sa.Connection) -> dict[str, int]:
    """What a stack already tracks, beyond the `Default` experiment every new one has."""
    def count(query: str) -> int:
        return connection.execute(sa.text(query)).scalar()

    return {
        "runs": count("SELECT COUNT(*) FROM runs"),
        "experiments": count("SELECT COUNT(*) FROM experiments WHERE name <> 'Default'"),
        "registered models": count("SELECT COUNT(*) FROM registered_models"),
        "logged models": count("SELECT COUNT(*) FROM logged_models"),
    }


def _schema(uri: str) -> str | None:
    with tables.engine(uri).connect() as connection:
        return tables.revision(connection)


def check(manifest: dict, location: Location, merge: bool) -> list[str]:
    """Everything that refuses before a byte moves; returns notes for what will be left as it is."""
    import mlflow

    notes = []
    target = _schema(location.backend_uri)
    if target is None:
        raise contents.ArchiveError(f"{location.backend_uri} has no MLflow tables yet: start the stack first "
                                    f"(`stack up`), then restore into it; nothing was changed.")
    contents.check_schema(manifest, "backend", target, known_revisions("backend"), mlflow.__version__)
    if "auth" in manifest.get("schema", {}):
        if location.auth_uri:
            contents.check_schema(manifest, "auth", _schema(location.auth_uri), known_revisions("auth"),
                                  mlflow.__version__)
        else:
            notes.append(f"the archive's {manifest['counts']['accounts']} sign-in account(s) are not restored: "
                         f"this stack asks for no sign-in")
    if not merge:
        with tables.engine(location.backend_uri).connect() as connection:
            held = {k: v for k, v in holdings(connection).items() if v}
        if held:
            raise contents.ArchiveError(
                "this stack already holds " + ", ".join(_count(v, k) for k, v in held.items()) +
                ": restoring into it could mix two histories. Restore into a new, empty stack (locally: another "
                "--state-dir; on Chameleon: the stack of a new lease), or ask to merge (--merge: the archive's "
                "runs go in beside these; ids that clash are reported and skipped, never overwritten). "
                "Nothing was changed.")
    free = location.store().free_bytes()
    needed = manifest["bytes"]["artifacts"]
    if free is not None and free < needed + MARGIN:
        raise contents.ArchiveError(f"not enough space for the artifacts in {location.artifacts}: they need "
                                    f"{human(needed)} and {human(free)} is free. Nothing was changed.")
    return notes


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n != 1 else f"1 {what[:-1]}"  # every kind in `holdings` ends in a plural s


def _extract_tables(archive: Path, folder: Path) -> None:
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            if member.isfile() and member.name.split("/", 1)[0] in ("backend", "auth"):
                target = folder / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)


def restore(archive: str | Path, location: Location, merge: bool = False, manifest: dict | None = None,
            clock: Clock | None = None) -> dict:
    """Restore `archive` into the stack at `location`; returns what went in, what was kept and what clashed."""
    clock = clock or Clock()
    archive = Path(archive)
    manifest = manifest or contents.verify(archive, say=clock.say)
    notes = check(manifest, location, merge)
    clock.say(f"restoring {describe(manifest)}")
    store = location.store()
    report = {"inserted": {}, "kept": [], "clashes": [], "files_copied": 0, "files_kept": [], "notes": notes}
    with tempfile.TemporaryDirectory(prefix="mlflow-restore-") as scratch:
        scratch = Path(scratch)
        _extract_tables(archive, scratch)
        with tables.engine(location.backend_uri).begin() as connection:
            clock.say("writing the tracking database's rows (one transaction)")
            loaded = tables.load(connection, scratch / "backend", manifest["tables"]["backend"], say=clock.say)
            skipped = tuple(f"{key}/" for key in
                            [artifact_key(r.get("artifact_uri")) for r in loaded.skipped("runs")] +
                            [artifact_key(r.get("artifact_location")) for r in loaded.skipped("logged_models")] if key)
            _copy_artifacts(archive, store, skipped, manifest, report, clock)
        _gather(report, loaded)
        if location.auth_uri and (scratch / "auth").is_dir():
            with tables.engine(location.auth_uri).begin() as connection:
                accounts = tables.load(connection, scratch / "auth", manifest["tables"]["auth"], say=clock.say)
            _gather(report, accounts)
    for note in _summary(report):
        clock.say(note)
    return report


def _copy_artifacts(archive: Path, store, skipped: tuple[str, ...], manifest: dict, report: dict, clock: Clock) -> None:
    total = manifest["bytes"]["artifacts"]
    clock.say(f"copying {manifest['counts']['artifact_files']} artifact files ({human(total)}) into the "
              f"{store.describe()}")
    moved, shown = 0, time.monotonic()
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            if not (member.isfile() and member.name.startswith("artifacts/")):
                continue
            key = member.name[len("artifacts/"):]
            moved += member.size
            if key.startswith(skipped):
                continue
            if store.exists(key):
                report["files_kept"].append(key)
            else:
                with tar.extractfile(member) as source:
                    store.put(key, source, member.size)
                report["files_copied"] += 1
            if time.monotonic() - shown > 5:
                clock.say(f"artifacts: {human(moved)} of {human(total)}")
                shown = time.monotonic()
    clock.say(f"artifacts: {report['files_copied']} file(s) copied ({human(moved)} read)")


def _gather(report: dict, loaded: tables.Loaded) -> None:
    for name, n in loaded.inserted.items():
        report["inserted"][name] = report["inserted"].get(name, 0) + n
    report["kept"] += loaded.kept
    report["clashes"] += loaded.clashes
    hanging = loaded.dropped.count() - len(loaded.clashes)
    if hanging:
        report["notes"].append(f"{hanging} row(s) skipped because what they belong to clashed")


def _summary(report: dict) -> list[str]:
    inserted = report["inserted"]
    lines = [f"restored: {inserted.get('experiments', 0)} experiment(s), {inserted.get('runs', 0)} run(s), "
             f"{inserted.get('metrics', 0)} metric points, {inserted.get('model_versions', 0)} registered "
             f"version(s), {inserted.get('registered_model_aliases', 0)} alias(es), {inserted.get('users', 0)} "
             f"account(s), {report['files_copied']} artifact file(s)"]
    if report["kept"]:
        lines.append(f"left as they were (the stack's own, the same as the archive's): {'; '.join(report['kept'][:5])}"
                     + (f" and {len(report['kept']) - 5} more" if len(report["kept"]) > 5 else ""))
    if report["clashes"]:
        lines.append(f"CLASHED, skipped (the stack's own kept): {'; '.join(report['clashes'][:10])}"
                     + (f" and {len(report['clashes']) - 10} more" if len(report["clashes"]) > 10 else ""))
    if report["files_kept"]:
        lines.append(f"{len(report['files_kept'])} artifact file(s) already there, kept as they were "
                     f"(first: {report['files_kept'][0]})")
    return lines + report["notes"]

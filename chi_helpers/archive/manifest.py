"""The archive's table of contents, and the checks an archive passes before anything is restored.

An archive is a tar file:

    backend/<table>.jsonl    MLflow's tables (runs, params, metrics, registered models, ...)
    auth/<table>.jsonl       the auth app's accounts (password hashes, never passwords) and permissions
    artifacts/<key>          every file of the artifact store, under the key the server gave it
    manifest.json            written last: versions, counts, bytes, and a SHA-256 per file

A manifest missing means the archive was cut short; a file whose checksum differs means it changed.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path, PurePosixPath

FORMAT = "mlflow-chi-archive/1"
MANIFEST = "manifest.json"
PARTS = ("backend", "auth", "artifacts")


class ArchiveError(ValueError):
    """The archive cannot be used; the message says why and what to do. Nothing was changed."""


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


class Hashing:
    """A reader that hashes what passes through it (an artifact on its way into the tar)."""

    def __init__(self, stream):
        self.stream, self.sha, self.size = stream, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def _safe(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and (name == MANIFEST or path.parts[0] in PARTS)


def verify(path: str | Path, say=lambda _: None) -> dict:
    """Read the whole archive, check every file against the manifest; return the manifest."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive. Give the path of a file `stack archive` wrote "
                           f"(notebook 08 prints it).")
    found: dict[str, dict] = {}
    manifest = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if not _safe(member.name):
                    raise ArchiveError(f"{path}: unexpected entry {member.name!r}: not an archive `stack archive` made")
                source = tar.extractfile(member)
                if member.name == MANIFEST:
                    manifest = json.loads(source.read())
                    continue
                digest = hashlib.sha256()
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                found[member.name] = {"sha256": digest.hexdigest(), "bytes": member.size}
    except (tarfile.TarError, EOFError, OSError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{path} was cut short or is not an archive ({error}). Nothing was restored; "
                           f"copy the archive again from where it was made.") from None
    if manifest is None:
        raise ArchiveError(f"{path} has no manifest: it was cut short (the manifest is written last) or was "
                           f"not made by `stack archive`. Nothing was restored.")
    if manifest.get("format") != FORMAT:
        raise ArchiveError(f"{path} is in format {manifest.get('format')!r}, not {FORMAT!r}: made by another "
                           f"version of this series. Restore it with that version.")
    listed = manifest.get("files", {})
    missing = sorted(set(listed) - set(found))
    extra = sorted(set(found) - set(listed))
    changed = sorted(name for name in set(listed) & set(found) if listed[name] != found[name])
    problems = ([f"{len(missing)} file(s) missing (first: {missing[0]})"] if missing else []) + \
               ([f"{len(extra)} file(s) not in the manifest (first: {extra[0]})"] if extra else []) + \
               ([f"{len(changed)} file(s) whose checksum differs (first: {changed[0]})"] if changed else [])
    if problems:
        raise ArchiveError(f"{path} does not match its manifest: {'; '.join(problems)}. It was damaged or "
                           f"changed after it was made. Nothing was restored.")
    say(f"checked {len(found)} files ({human(sum(f['bytes'] for f in found.values()))}) against the manifest")
    return manifest


def check_schema(manifest: dict, part: str, target_revision: str | None, known: set[str], mlflow_version: str) -> None:
    """Refuse an archive whose schema is not the target's: rows of another schema may not fit."""
    theirs = manifest.get("schema", {}).get(part)
    if theirs is None or theirs == target_revision:
        return
    made_with = manifest.get("mlflow_version", "an unknown version")
    if theirs not in known:
        raise ArchiveError(
            f"the archive's {part} schema ({theirs}, MLflow {made_with}) is newer than this stack's "
            f"({target_revision}, MLflow {mlflow_version}). Restore it into a stack running MLflow {made_with}; "
            f"nothing was changed.")
    raise ArchiveError(
        f"the archive's {part} schema ({theirs}, MLflow {made_with}) is older than this stack's "
        f"({target_revision}, MLflow {mlflow_version}). Restore it into a stack running MLflow {made_with}, "
        f"then upgrade that stack (`mlflow db upgrade`); nothing was changed.")

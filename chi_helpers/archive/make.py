"""`stack archive --output FILE`: one file with a tracking stack's whole history (see `manifest`).

The databases are read first, each in one snapshot, into a scratch folder; then
the size of everything is known, and the disk is checked before the archive is written. The file is
written as `FILE.partial` and renamed when complete, so a cut-short run never leaves a file that
looks finished. The stack can go on running meanwhile.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from chi_helpers.archive import manifest as contents
from chi_helpers.archive import tables
from chi_helpers.archive.location import Location
from chi_helpers.progress import Clock

MARGIN = 16 * 1024 * 1024  # room kept free on the disk beyond the archive itself
TAR_OVERHEAD = 1536  # a tar header and the padding of one member, at most


def artifact_key(uri: str | None) -> str | None:
    """The store key an `mlflow-artifacts:/1/models/m-.../artifacts` URI names (None for another kind)."""
    if not uri or not uri.startswith("mlflow-artifacts:"):
        return None
    return urlsplit(uri).path.strip("/")


def unregistered_models(backend_uri: str) -> dict[str, str]:
    """{model id: its artifacts' key} of the logged models no registered version points to."""
    import sqlalchemy as sa

    with tables.snapshot(backend_uri) as connection:
        models = connection.execute(sa.text("SELECT model_id, artifact_location FROM logged_models")).all()
        versions = connection.execute(sa.text("SELECT source, storage_location FROM model_versions")).all()
    registered = {v.storage_location for v in versions} | {v.source for v in versions}
    return {m.model_id: artifact_key(m.artifact_location) for m in models
            if m.artifact_location not in registered and f"models:/{m.model_id}" not in registered}


def counts(written: dict[str, int], auth_written: dict[str, int]) -> dict[str, int]:
    return {
        "experiments": written.get("experiments", 0),
        "runs": written.get("runs", 0),
        "metric_points": written.get("metrics", 0),
        "params": written.get("params", 0),
        "logged_models": written.get("logged_models", 0),
        "registered_models": written.get("registered_models", 0),
        "registered_versions": written.get("model_versions", 0),
        "aliases": written.get("registered_model_aliases", 0),
        "accounts": auth_written.get("users", 0),
    }


def make(location: Location, output: str | Path, runs_only: bool = False, clock: Clock | None = None) -> dict:
    """Write the archive; return its manifest."""
    import mlflow

    clock = clock or Clock()
    output = Path(output).resolve()
    if output.exists():
        raise FileExistsError(f"{output} exists already: choose another name for the archive, or move that "
                              f"file away first (it is left as it is)")
    output.parent.mkdir(parents=True, exist_ok=True)
    left_out: dict[str, str] = unregistered_models(location.backend_uri) if runs_only else {}
    # The rows go to a scratch folder first (in the system's temporary folder, not the output's disk, which
    # is checked once the size is known).
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-") as scratch:
        scratch = Path(scratch)
        clock.say("reading the tracking database (one snapshot)")
        backend = tables.dump(location.backend_uri, scratch / "backend",
                              leave_out=lambda table, row: table == "logged_models" and row["model_id"] in left_out,
                              say=clock.say)
        auth = {"tables": {}, "revision": None}
        if location.auth_uri:
            clock.say("reading the sign-in accounts (password hashes only)")
            auth = tables.dump(location.auth_uri, scratch / "auth", say=clock.say)
        database_files = sorted(p for p in scratch.rglob("*.jsonl"))
        database_bytes = sum(p.stat().st_size for p in database_files)
        clock.say(f"databases: {backend['tables'].get('runs', 0)} runs, {backend['tables'].get('metrics', 0)} metric "
                  f"points, {human(database_bytes)}")

        store = location.store()
        clock.say(f"listing the artifacts in the {store.describe()}")
        skipped = tuple(f"{key}/" for key in left_out.values() if key)
        artifacts = [(key, size) for key, size in store.files() if not key.startswith(skipped)]
        artifact_bytes = sum(size for _, size in artifacts)
        if runs_only:
            clock.say(f"--runs-only: leaving out {len(left_out)} logged model(s) no registered version uses")
        total = database_bytes + artifact_bytes + TAR_OVERHEAD * (len(database_files) + len(artifacts) + 2)
        free = shutil.disk_usage(output.parent).free
        if free < total + MARGIN:
            raise contents.ArchiveError(
                f"not enough space for the archive in {output.parent}: it needs {human(total)} and "
                f"{human(free)} is free. Free some space, write it elsewhere (--output), or leave out the "
                f"unregistered models (--runs-only). Nothing was written.")
        clock.say(f"artifacts: {len(artifacts)} files, {human(artifact_bytes)}; the archive will be about "
                  f"{human(total)}, written to {output}")

        files: dict[str, dict] = {}
        partial = output.with_name(output.name + ".partial")
        try:
            with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
                for path in database_files:
                    name = path.relative_to(scratch).as_posix()
                    with open(path, "rb") as source:
                        files[name] = _add(tar, name, source, path.stat().st_size)
                _add_artifacts(tar, store, artifacts, artifact_bytes, files, clock)
                manifest = {
                    "format": contents.FORMAT,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "mlflow_version": mlflow.__version__,
                    "schema": {"backend": backend["revision"], **({"auth": auth["revision"]} if location.auth_uri else {})},
                    "source": {"backend": backend["dialect"], "artifacts": store.describe().split()[0]},
                    "runs_only": runs_only,
                    "left_out_models": sorted(left_out),
                    "tables": {"backend": backend["order"], "auth": auth.get("order", [])},
                    "counts": {**counts(backend["tables"], auth["tables"]), "artifact_files": len(artifacts)},
                    "bytes": {"database": database_bytes, "artifacts": artifact_bytes},
                    "files": files,
                }
                body = json.dumps(manifest, indent=1).encode()
                info = tarfile.TarInfo(contents.MANIFEST)
                info.size, info.mtime = len(body), int(time.time())
                tar.addfile(info, io.BytesIO(body))
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    size = output.stat().st_size
    clock.say(f"archive written: {output} ({human(size)}): {describe(manifest)}")
    return manifest


def _add(tar: tarfile.TarFile, name: str, stream, size: int) -> dict:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = size, int(time.time())
    reader = contents.Hashing(stream)
    tar.addfile(info, reader)
    if reader.size != size:
        raise RuntimeError(f"{name} changed size while being archived ({size} -> {reader.size} bytes): run again")
    return {"sha256": reader.sha.hexdigest(), "bytes": size}


def _add_artifacts(tar, store, artifacts, artifact_bytes, files, clock: Clock) -> None:
    moved, shown = 0, time.monotonic()
    for number, (key, size) in enumerate(artifacts, 1):
        stream = store.open(key)
        try:
            files[f"artifacts/{key}"] = _add(tar, f"artifacts/{key}", stream, size)
        finally:
            stream.close()
        moved += size
        if time.monotonic() - shown > 5 or number == len(artifacts):
            clock.say(f"artifacts: {number}/{len(artifacts)} files, {human(moved)} of {human(artifact_bytes)}")
            shown = time.monotonic()


def describe(manifest: dict) -> str:
    c = manifest["counts"]
    return (f"{c['experiments']} experiment(s), {c['runs']} run(s), {c['metric_points']} metric points, "
            f"{c['registered_versions']} registered version(s), {c['aliases']} alias(es), "
            f"{c['artifact_files']} artifact file(s) ({human(manifest['bytes']['artifacts'])}), "
            f"{c['accounts']} account(s)")


human = contents.human

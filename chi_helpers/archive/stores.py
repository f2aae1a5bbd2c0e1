"""Where a stack keeps its artifacts: a folder (the local stack) or an S3 bucket (the node's MinIO, or
the local stack's S3 endpoint). Both answer the same few questions, with keys relative to the
`--artifacts-destination` the MLflow server was given (`1/<run id>/artifacts/...`,
`1/models/<model id>/artifacts/...`), which is what the database's `mlflow-artifacts:/` URIs name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit


class FolderStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def describe(self) -> str:
        return f"folder {self.root}"

    def files(self) -> Iterator[tuple[str, int]]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                yield path.relative_to(self.root).as_posix(), path.stat().st_size

    def open(self, key: str) -> BinaryIO:
        return open(self.root / key, "rb")

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def put(self, key: str, stream: BinaryIO, size: int) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
        partial.replace(path)

    def free_bytes(self) -> int | None:
        place = self.root
        while not place.exists():
            place = place.parent
        return shutil.disk_usage(place).free


class BucketStore:
    """An S3 bucket (and prefix) through boto3, with the endpoint and keys the MLflow server uses."""

    def __init__(self, uri: str, env: dict[str, str] | None = None):
        parts = urlsplit(uri)
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        self.env = {**os.environ, **(env or {})}

    def describe(self) -> str:
        return f"bucket s3://{self.bucket}/{self.prefix} at {self.env.get('MLFLOW_S3_ENDPOINT_URL', 'AWS')}"

    def _client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.env.get("MLFLOW_S3_ENDPOINT_URL") or None,
            aws_access_key_id=self.env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self.env.get("AWS_SECRET_ACCESS_KEY"),
            region_name=self.env.get("AWS_DEFAULT_REGION", "us-east-1"),
        )

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def files(self) -> Iterator[tuple[str, int]]:
        pages = self._client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) + 1:] if self.prefix else item["Key"]
                if key and not key.endswith("/"):
                    yield key, item["Size"]

    def open(self, key: str) -> BinaryIO:
        return self._client().get_object(Bucket=self.bucket, Key=self._full(key))["Body"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client().head_object(Bucket=self.bucket, Key=self._full(key))
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, stream: BinaryIO, size: int) -> None:
        self._client().upload_fileobj(stream, self.bucket, self._full(key))

    def free_bytes(self) -> int | None:
        return None  # S3 does not say; the object store's own disk is the node's


def store_for(destination: str, env: dict[str, str] | None = None) -> FolderStore | BucketStore:
    """The store an MLflow server's `--artifacts-destination` names."""
    if destination.startswith("s3://"):
        return BucketStore(destination, env)
    if destination.startswith("file://"):
        return FolderStore(urlsplit(destination).path)
    if "://" in destination:
        raise ValueError(f"cannot archive artifacts kept at {destination}: only a folder or s3://bucket/ is supported")
    return FolderStore(destination)

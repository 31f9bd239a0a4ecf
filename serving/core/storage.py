"""Object storage for uploads and outputs: a local directory or an S3 bucket.

Both speak `put(key, data, media_type)`, `get(key) -> bytes`, `exists(key)` and `url(key)`.
Local objects are served by the app at `GET /files/{key}`; S3 objects by their public base URL or
a presigned GET URL. With `account_prefixes`, writers put each account's objects under
`accounts/<account_id>/` (`account_key`); readers only ever use the keys stored in the database.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Protocol

from retouch.pipelines.vocabulary import IMAGE_MEDIA_TYPES

from .errors import InvalidInput, ServiceUnavailable

# Stored objects by extension: the images and the reels (MP4).
VIDEO_MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
MEDIA_TYPES = {**IMAGE_MEDIA_TYPES, **VIDEO_MEDIA_TYPES}
# The output formats AIXpose offers (`GET /v1/catalog/output-formats`), the default first.
PICTURE_FORMATS = ("jpeg", "png", "webp")
VIDEO_FORMATS = ("mp4", "webm")
EXTENSIONS = {v: k for k, v in MEDIA_TYPES.items()}


class StorageUnavailable(ServiceUnavailable):
    """Objects cannot be written or read: a full or unwritable disk, an object store that does
    not answer in time. The API answers it 503 `service_unavailable`; a job fails with the
    dispatcher's `storage_unavailable` and is refunded."""


class Storage(Protocol):
    def put(self, key: str, data: bytes, media_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def url(self, key: str) -> str: ...

    def media_type(self, key: str) -> str: ...


def account_key(storage, account_id: str, key: str) -> str:
    """Where an account's object `key` (e.g. `outputs/<job>/1.png`) is stored: under
    `accounts/<account_id>/` when the storage keeps per-account prefixes, else as is."""
    if getattr(storage, "account_prefixes", False):
        return f"accounts/{account_id}/{key}"
    return key


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput("key", f"{key!r} is not a valid storage key")
    return key


class LocalStorage:
    """Files under `root`; each object's media type is kept in a `.meta` sidecar."""

    def __init__(self, root: Path | str, public_base_url: str, *, account_prefixes: bool = False):
        self.account_prefixes = account_prefixes
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_base_url = public_base_url.rstrip("/")

    def _path(self, key: str) -> Path:
        path = (self.root / _check_key(key)).resolve()
        if self.root.resolve() not in path.parents:
            raise InvalidInput("key", f"{key!r} is outside the storage root")
        return path

    def put(self, key: str, data: bytes, media_type: str) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(tmp, data)
            self._write(path.with_name(path.name + ".meta"),
                        json.dumps({"media_type": media_type}).encode())
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            reason = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                      else f"it cannot be written ({os.strerror(exc.errno or errno.EIO)})")
            raise StorageUnavailable(f"file storage is unavailable: {reason}") from exc

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.write_bytes(data)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except InvalidInput:
            return False

    def media_type(self, key: str) -> str:
        meta = self._path(key).with_name(Path(key).name + ".meta")
        if meta.is_file():
            return json.loads(meta.read_text())["media_type"]
        return MEDIA_TYPES.get(Path(key).suffix.lstrip(".").lower(), "application/octet-stream")

    def url(self, key: str) -> str:
        return f"{self.public_base_url}/files/{_check_key(key)}"


class S3Storage:
    """An S3 (or S3-compatible) bucket through boto3; the bucket is created on first use."""

    def __init__(self, endpoint_url: str | None, bucket: str, region: str,
                 public_base_url: str | None = None, *, presign_seconds: int = 7 * 24 * 3600,
                 account_prefixes: bool = False, client=None, connect_timeout: float = 5.0,
                 read_timeout: float = 20.0, max_attempts: int = 2):
        import boto3  # imported here: local-only deployments never load it
        from botocore.config import Config

        self.account_prefixes = account_prefixes
        self.bucket = bucket
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.presign_seconds = presign_seconds
        # Bounded calls: each attempt connects and reads within these timeouts, `max_attempts`
        # in all, so an endpoint that never answers fails the call instead of hanging.
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": max_attempts, "mode": "standard"})
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                                             config=config)
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
        self._bucket_ready = True

    def put(self, key: str, data: bytes, media_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ensure_bucket()
            self.client.put_object(Bucket=self.bucket, Key=_check_key(key), Body=data,
                                   ContentType=media_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"object storage is unavailable: {exc}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=_check_key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from exc
            raise StorageUnavailable(f"object storage is unavailable: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage is unavailable: {exc}") from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=_check_key(key))
            return True
        except ClientError:
            return False
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage is unavailable: {exc}") from exc

    def media_type(self, key: str) -> str:
        head = self.client.head_object(Bucket=self.bucket, Key=_check_key(key))
        return head.get("ContentType", "application/octet-stream")

    def url(self, key: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{_check_key(key)}"
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": _check_key(key)},
            ExpiresIn=self.presign_seconds)


def make_storage(settings) -> Storage:
    """The storage the settings name: `<home>/files` locally, or the configured S3 bucket."""
    if settings.storage == "s3":
        return S3Storage(settings.s3_endpoint_url, settings.s3_bucket, settings.s3_region,
                         settings.s3_public_base_url, presign_seconds=settings.s3_presign_seconds,
                         account_prefixes=settings.storage_account_prefixes,
                         connect_timeout=settings.s3_connect_timeout_seconds,
                         read_timeout=settings.s3_read_timeout_seconds,
                         max_attempts=settings.s3_max_attempts)
    return LocalStorage(settings.home / "files", settings.resolved_public_base_url,
                        account_prefixes=settings.storage_account_prefixes)

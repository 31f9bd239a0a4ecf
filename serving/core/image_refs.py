"""Image bytes validation and image-reference resolution for the HTTP surfaces.

`read_upload(stream, field)` reads an uploaded file up to the one size cap (`MAX_IMAGE_BYTES`);
`validate_image_bytes(data, field)` checks real PNG/JPEG/WEBP bytes (≤ 50 MB) and their
dimensions. `resolve_image_refs(...)` turns every `ImageRef` of a typed request into a stored
object (storage key + URL) before a job is created, so bad references fail fast naming the field
and the job never fetches the internet itself.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

from retouch.pipelines.images import decode_image, media_type, sniff_format
from retouch.pipelines.vocabulary import MAX_IMAGE_BYTES

from .errors import InvalidInput, pipeline_input_errors
from .storage import account_key


@dataclass(frozen=True)
class ValidatedImage:
    data: bytes
    media_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return self.media_type.split("/", 1)[1]


def read_upload(stream: BinaryIO, field: str) -> bytes:
    """An uploaded file's bytes; `InvalidInput(field)` when it holds more than `MAX_IMAGE_BYTES`."""
    data = stream.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidInput(field, f"is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def check_base64_size(encoded: str, field: str) -> None:
    """`InvalidInput(field)` when base64 text is too long to decode to at most `MAX_IMAGE_BYTES`."""
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidInput(field, f"is larger than {MAX_IMAGE_BYTES} bytes")


def validate_image_bytes(data: bytes, field: str) -> ValidatedImage:
    """Real PNG/JPEG/WEBP bytes of at most 50 MB that decode fully, with their dimensions."""
    with pipeline_input_errors():  # magic bytes, size cap, dimensions, full decode
        image = decode_image(data, field)
    return ValidatedImage(bytes(data), media_type(sniff_format(bytes(data[:16]))), image.width,
                          image.height)


# ---- resolving references ---------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedImage:
    """One image reference made concrete: the stored object a job will read."""

    field: str
    ref: dict[str, str]  # the wire form stored in the job: {"upload_id": ...} or {"generation_id": ...}
    storage_key: str
    url: str
    size: tuple[int, int] | None = None  # (width, height) when known without reading the object


def stored_image_size(storage, image: ResolvedImage) -> tuple[int, int]:
    """(width, height) of a resolved image: from its upload row, else the stored file's header."""
    if image.size is not None:
        return image.size
    from PIL import Image

    with Image.open(io.BytesIO(storage.get(image.storage_key))) as opened:
        return opened.size


def store_upload(session, storage, key, image: ValidatedImage, *, reuse: bool = False):
    """Store validated image bytes as an upload owned by `key` (row + object).

    With `reuse`, identical bytes already uploaded by the same key give back that upload, so a
    retried request whose URL serves the same image makes the same job body (idempotency).
    """
    from sqlalchemy import select

    from .tables import Upload, new_uuid

    digest = hashlib.sha256(image.data).hexdigest()
    if reuse:
        existing = session.scalars(
            select(Upload).where(Upload.api_key_id == key.id, Upload.sha256 == digest)
            .order_by(Upload.created_at, Upload.id).limit(1)).first()
        if existing is not None and storage.exists(existing.storage_key):
            return existing
    upload_id = new_uuid()
    storage_key = account_key(storage, key.account_id,
                              f"uploads/{upload_id}.{image.extension}")
    storage.put(storage_key, image.data, image.media_type)
    upload = Upload(id=upload_id, account_id=key.account_id, api_key_id=key.id,
                    storage_key=storage_key, media_type=image.media_type, width=image.width,
                    height=image.height, bytes=len(image.data), sha256=digest)
    session.add(upload)
    session.flush()
    return upload


def _resolve_upload(session, storage, key, field: str, upload_id: str) -> ResolvedImage:
    from .tables import Upload

    upload = session.get(Upload, upload_id)
    # Uploads are reusable by the API key that created them (the seed's rule).
    if upload is None or upload.api_key_id != key.id:
        raise InvalidInput(field, f"upload {upload_id!r} does not exist for this API key")
    return ResolvedImage(field, {"upload_id": upload.id}, upload.storage_key,
                         storage.url(upload.storage_key), (upload.width, upload.height))


def _resolve_generation(session, storage, key, field: str, generation_id: str) -> ResolvedImage:
    from .tables import Generation

    generation = session.get(Generation, generation_id)
    if generation is None or generation.account_id != key.account_id:
        raise InvalidInput(field, f"generation {generation_id!r} does not exist in this account")
    if generation.status != "completed" or not generation.output_keys:
        raise InvalidInput(field, f"generation {generation_id!r} is {generation.status}; only a "
                                  "completed generation's output can be reused")
    storage_key = generation.output_keys[0]
    return ResolvedImage(field, {"generation_id": generation.id}, storage_key,
                         storage.url(storage_key))


def resolve_image_refs(session_factory, storage, fetcher, key, request) -> dict[str, ResolvedImage]:
    """Resolve every image reference of `request` for `key`, fetching URLs into uploads.

    Raises `InvalidInput` naming the first bad field. URL images are downloaded once here, all
    at once under the fetcher's deadline (SSRF-safe), validated and stored as uploads of `key`.
    """
    from .db import transaction

    fields = request.image_fields()
    if not fields:
        return {}  # nothing to resolve: no transaction
    fetched = {field: result.image for field, result in fetcher.fetch_images(
        {field: ref.value for field, ref in fields.items() if ref.kind == "url"}).items()}
    resolved: dict[str, ResolvedImage] = {}
    with transaction(session_factory) as session:
        for field, ref in fields.items():
            if ref.kind == "upload_id":
                resolved[field] = _resolve_upload(session, storage, key, field, ref.value)
            elif ref.kind == "generation_id":
                resolved[field] = _resolve_generation(session, storage, key, field, ref.value)
            elif ref.kind == "url":
                upload = store_upload(session, storage, key, fetched[field], reuse=True)
                resolved[field] = ResolvedImage(field, {"upload_id": upload.id},
                                                upload.storage_key,
                                                storage.url(upload.storage_key),
                                                (upload.width, upload.height))
            else:
                raise InvalidInput(field, "local paths are not accepted over HTTP")
    return resolved


_PATH_PART = re.compile(r"([A-Za-z_]+)(?:\[(\d+)\])?")


def _set_path(body: dict[str, Any], path: str, value: Any) -> None:
    """Set `input.images[1]` style paths inside a JSON-like body."""
    parts = [_PATH_PART.fullmatch(p).groups() for p in path.split(".")]
    target: Any = body
    for i, (name, index) in enumerate(parts):
        last = i == len(parts) - 1
        if index is None:
            if last:
                target[name] = value
            else:
                target = target[name]
        else:
            if last:
                target[name][int(index)] = value
            else:
                target = target[name][int(index)]


def job_body(request, resolved: dict[str, ResolvedImage]) -> dict[str, Any]:
    """The body a job stores: the validated request with each image ref in resolved wire form.

    Only `{upload_id}` and `{generation_id}` references remain, so the job reads stored objects
    and `parse_request` accepts the body again when the job runs.
    """
    body = request.model_dump(mode="json", exclude_none=True)
    for field, image in resolved.items():
        _set_path(body, field, dict(image.ref))
    return body


def primary_input_url(resolved: dict[str, ResolvedImage]) -> str | None:
    """The URL shown as `input_image`: the main/first image of the request."""
    for field in ("input.main_image", "input.image", "input.images[0]"):
        if field in resolved:
            return resolved[field].url
    return next(iter(resolved.values())).url if resolved else None


def load_job_inputs(session_factory, storage, request) -> dict[str, bytes]:
    """A job's input images as stored bytes, keyed by request field (`input.images[0]`, ...).

    Used by the dispatcher: a stored job's request only holds `{upload_id}` / `{generation_id}`
    refs.
    """
    from .tables import Generation, Upload

    keys: dict[str, str] = {}
    with session_factory() as session:
        for field, ref in request.image_fields().items():
            if ref.kind == "upload_id":
                row = session.get(Upload, ref.value)
                storage_key = row.storage_key if row is not None else None
            elif ref.kind == "generation_id":
                row = session.get(Generation, ref.value)
                storage_key = row.output_keys[0] if row is not None and row.output_keys else None
            else:
                storage_key = None
            if storage_key is None:
                raise InvalidInput(field, f"the stored image for {ref.kind} {ref.value!r} is gone")
            keys[field] = storage_key
    images: dict[str, bytes] = {}
    for field, storage_key in keys.items():
        try:
            images[field] = storage.get(storage_key)
        except KeyError:
            raise InvalidInput(field, "the stored image is gone") from None
    return images

"""What exactly a model was loaded from, as one string per spec (recorded by `ModelStore`).

- a Hugging Face hub id: the commit hash of the snapshot in the local cache (the pinned revision,
  or what the cached branch ref points at);
- a local directory or file (the tiny twins, local overrides, downloaded `.pth` files):
  `sha256:<hex>` over the file names and contents;
- a random twin: `random:<seed>`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def random_revision(seed: int) -> str:
    return f"random:{seed}"


def content_revision(path: Path | str) -> str:
    """`sha256:` of a file, or of every file under a directory (relative names and bytes, in
    sorted order), so the same twin gives the same string wherever its cache lives."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() if file != root else b"")
        digest.update(b"\0%d\0" % file.stat().st_size)
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit hash of `repo_id`'s snapshot in the local Hugging Face cache (no network)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, local_files_only=True)).name

"""Long SDXL prompts as embeddings: split into CLIP-sized chunks, encode in one batched call.

CLIP reads 77 tokens. Backend prompts plus the seed's atmosphere strings and the client's
instruction are often longer, and plain truncation would drop exactly the client's part. So a
long prompt is split at commas into chunks of at most CHUNK_TOKENS, the chunks are encoded
together (one text-encoder pass per encoder, the chunks as a batch) and the embeddings are
concatenated along the sequence axis (cross-attention takes any length); the pooled embedding
comes from the first chunk. The shorter of prompt and negative prompt is padded with empty
chunks so both have the same length.

Negative prompts are a handful of constants, so their chunks and embeddings (and the empty
padding chunk's) are kept in a small LRU cache per text encoder (`EMBEDDING_CACHE_SIZE` texts
per encoder; a released pipeline's entries go with it). The cache assumes the text encoders' weights do not change after loading
(no text-encoder LoRA); `clear_embedding_cache()` empties it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from retouch.models.accel import module_device

CHUNK_TOKENS = 75
EMBEDDING_CACHE_SIZE = 16


def prompt_chunks(tokenizer: Any, text: str, limit: int = CHUNK_TOKENS) -> list[str]:
    """`text` split at commas (and at words inside an over-long phrase) into chunks of at most
    `limit` tokens; always at least one chunk (possibly empty)."""
    def count(piece: str) -> int:
        return len(tokenizer(piece, add_special_tokens=False)["input_ids"])

    pieces: list[str] = []
    for phrase in (p.strip() for p in text.replace(". ", ", ").split(",")):
        if not phrase:
            continue
        if count(phrase) <= limit:
            pieces.append(phrase)
            continue
        words, current = phrase.split(), ""
        for word in words:  # a single over-long phrase: split by words
            candidate = f"{current} {word}".strip()
            if current and count(candidate) > limit:
                pieces.append(current)
                candidate = word
            current = candidate
        if current:
            pieces.append(current)
    chunks, current = [], ""
    for piece in pieces:
        candidate = f"{current}, {piece}" if current else piece
        if current and count(candidate) > limit:
            chunks.append(current)
            candidate = piece
        current = candidate
    if current or not chunks:
        chunks.append(current)
    return chunks


@dataclass(frozen=True)
class EncodedChunks:
    """Per-chunk embeddings: `embeds` (chunks, 77, D) and `pooled` (chunks, P)."""

    chunks: tuple[str, ...]
    embeds: torch.Tensor
    pooled: torch.Tensor

    def padded(self, count: int, empty: "EncodedChunks") -> "EncodedChunks":
        """These chunks followed by copies of the one-chunk `empty` up to `count` chunks."""
        missing = count - len(self.chunks)
        if missing <= 0:
            return self
        return EncodedChunks(self.chunks + empty.chunks * missing,
                             torch.cat([self.embeds, empty.embeds.expand(missing, -1, -1)]),
                             torch.cat([self.pooled, empty.pooled.expand(missing, -1)]))

    def sequence(self) -> torch.Tensor:
        """The chunks' embeddings one after the other: (1, chunks · 77, D)."""
        return self.embeds.reshape(1, -1, self.embeds.shape[-1])

    def first_pooled(self) -> torch.Tensor:
        return self.pooled[:1]


def _encoders(pipe: Any) -> tuple[Any, Any]:
    tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    encoder = getattr(pipe, "text_encoder_2", None) or getattr(pipe, "text_encoder", None)
    return tokenizer, encoder


def embedding_device(pipe: Any) -> torch.device:
    """Where the UNet runs (`pipe.device` would walk every module of the pipeline)."""
    return module_device(pipe.unet)


def _encode(pipe: Any, chunks: list[str], device: torch.device) -> EncodedChunks:
    """All `chunks` through both text encoders in one batched `encode_prompt` call."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=list(chunks), device=device,
                                              do_classifier_free_guidance=False)
    return EncodedChunks(tuple(chunks), embeds, pooled)


class _EmbeddingCache:
    """text → EncodedChunks, LRU-bounded, one table per text encoder (held weakly)."""

    def __init__(self, size: int):
        self.size = size
        self._tables: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def get(self, encoder: Any, key: tuple) -> EncodedChunks | None:
        with self._lock:
            table = self._tables.get(encoder)
            if table is None or key not in table:
                return None
            table.move_to_end(key)
            return table[key]

    def put(self, encoder: Any, key: tuple, value: EncodedChunks) -> None:
        with self._lock:
            table = self._tables.setdefault(encoder, OrderedDict())
            table[key] = value
            table.move_to_end(key)
            while len(table) > self.size:
                table.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(table) for table in self._tables.values())


_CACHE = _EmbeddingCache(EMBEDDING_CACHE_SIZE)


def clear_embedding_cache() -> None:
    _CACHE.clear()


def embedding_cache_size() -> int:
    """How many texts (negative prompts, the empty chunk) are cached, over all encoders."""
    return len(_CACHE)


def _cached_encoding(pipe: Any, tokenizer: Any, encoder: Any, text: str,
                     device: torch.device) -> EncodedChunks:
    """`text`'s chunks encoded, from the cache when this encoder has seen it."""
    key = (text, id(getattr(pipe, "text_encoder", None)), str(device),
           next(encoder.parameters()).dtype)
    found = _CACHE.get(encoder, key)
    if found is None:
        found = _encode(pipe, prompt_chunks(tokenizer, text), device)
        _CACHE.put(encoder, key, found)
    return found


@torch.inference_mode()
def encode_long_prompt(pipe: Any, prompt: str, negative_prompt: str) -> dict[str, Any] | None:
    """Chunked SDXL prompt embeddings (the `prompt_embeds`, `negative_prompt_embeds`,
    `pooled_prompt_embeds`, `negative_pooled_prompt_embeds` call arguments), or None when both
    prompts fit in one CLIP window (the pipeline then encodes the text itself)."""
    tokenizer, encoder = _encoders(pipe)
    if tokenizer is None or encoder is None or not hasattr(pipe, "encode_prompt"):
        return None
    device = embedding_device(pipe)
    negative = _cached_encoding(pipe, tokenizer, encoder, negative_prompt, device)
    positive_chunks = prompt_chunks(tokenizer, prompt)
    if len(positive_chunks) == 1 and len(negative.chunks) == 1:
        return None
    count = max(len(positive_chunks), len(negative.chunks))
    empty = _cached_encoding(pipe, tokenizer, encoder, "", device)
    positive = _encode(pipe, positive_chunks, device).padded(count, empty)
    negative = negative.padded(count, empty)
    return {"prompt_embeds": positive.sequence(),
            "negative_prompt_embeds": negative.sequence(),
            "pooled_prompt_embeds": positive.first_pooled(),
            "negative_pooled_prompt_embeds": negative.first_pooled()}

"""Pieces the benchmarks share: device sync, quiet truncation warnings, and the conditioning that
makes a plain diffusers call do the same work as ours.

Where a prompt or the negative prompt is longer than CLIP's 77 tokens, our pipelines encode every
chunk of it (`pipelines.text_embeddings`) while plain diffusers would truncate. `PlainConditioning`
hands plain diffusers the same chunks, encoded by its own `encode_prompt` on every call (one
batched call for the prompt's chunks, one for the negative prompt's), so both denoise with the
same embeddings; when both prompts fit, plain diffusers gets the text.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

SDXL_LOGGER = "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl"


def sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet_truncation_warnings() -> Iterator[None]:
    """diffusers warns on every call that truncates a prompt (plain reference calls do)."""
    logger = logging.getLogger(SDXL_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class PlainConditioning:
    """`kwargs()`: the prompt arguments for a plain diffusers SDXL call doing our work."""

    def __init__(self, plain: Any, prompt: str, negative_prompt: str, device: Any):
        from retouch.pipelines.text_embeddings import prompt_chunks

        self.plain, self.prompt, self.negative_prompt = plain, prompt, negative_prompt
        self.device = device
        self.positive_chunks = prompt_chunks(plain.tokenizer, prompt)
        self.negative_chunks = prompt_chunks(plain.tokenizer, negative_prompt)
        self.chunked = len(self.positive_chunks) > 1 or len(self.negative_chunks) > 1

    def describe(self) -> str:
        if not self.chunked:
            return "both prompts fit in 77 tokens: the same text for both"
        return (f"the prompt's {len(self.positive_chunks)} and the negative prompt's "
                f"{len(self.negative_chunks)} chunks, the same embeddings for both")

    def kwargs(self) -> dict[str, Any]:
        if not self.chunked:
            return {"prompt": self.prompt, "negative_prompt": self.negative_prompt}
        import torch

        count = max(len(self.positive_chunks), len(self.negative_chunks))
        encoded = []
        for chunks in (self.positive_chunks, self.negative_chunks):
            embeds, _, pooled, _ = self.plain.encode_prompt(
                prompt=chunks, device=torch.device(self.device), do_classifier_free_guidance=False)
            encoded.append((embeds, pooled))
        if len(self.positive_chunks) < count or len(self.negative_chunks) < count:
            empty, _, _, _ = self.plain.encode_prompt(
                prompt=[""], device=torch.device(self.device), do_classifier_free_guidance=False)
            encoded = [(torch.cat([embeds, empty.expand(count - len(embeds), -1, -1)]), pooled)
                       for embeds, pooled in encoded]
        (positive, pooled), (negative, negative_pooled) = encoded
        width = positive.shape[-1]
        return {"prompt_embeds": positive.reshape(1, -1, width),
                "negative_prompt_embeds": negative.reshape(1, -1, width),
                "pooled_prompt_embeds": pooled[:1],
                "negative_pooled_prompt_embeds": negative_pooled[:1]}

"""Several jobs of one pipeline denoised together: one diffusers call with a batch of prompts.

`run_diffusion_batch(pipe, contexts, prompts, negative_prompts, **kwargs)` runs what
`common.run_diffusion` runs for one job, for several at once: every job keeps its own prompt
embeddings, its own seeded generator (so its starting noise is the one it would get alone), its
own progress bar and its own cancel flag. Prompts are encoded one job at a time exactly as a
single call would encode them; jobs whose embeddings differ in length (a long prompt split into
more CLIP windows) run in separate sub-batches, never padded.

Cancel: the denoising loop stops only when every job of the batch is cancelled; a job cancelled
alone is finished by the loop and then raises `Cancelled`, so the others are not held back.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from retouch.models.accel import prepare_vae_for_size

from .common import RunContext, encode_long_prompt
from .text_embeddings import embedding_device
from .errors import Cancelled

EMBEDDING_KEYS = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                  "negative_pooled_prompt_embeds")


@torch.inference_mode()
def prompt_embeddings(pipe: Any, prompt: str, negative_prompt: str) -> dict[str, torch.Tensor]:
    """The SDXL embeddings one call would compute for this prompt pair (batch of one)."""
    chunked = encode_long_prompt(pipe, prompt, negative_prompt)
    if chunked is not None:
        return chunked
    parts = pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt,
                               device=embedding_device(pipe), do_classifier_free_guidance=True)
    return dict(zip(EMBEDDING_KEYS, parts))


class _BatchProgress:
    """One diffusers step callback that moves every job's bar and honours every cancel flag."""

    def __init__(self, contexts: list[RunContext], start: float, end: float, total_steps: int):
        self.contexts, self.start, self.end, self.total = contexts, start, end, total_steps

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        live = [ctx for ctx in self.contexts if not ctx.is_cancelled()]
        if not live:
            raise Cancelled("every job of the batch was cancelled")
        total = max(1, int(getattr(pipe, "num_timesteps", None) or self.total))
        for ctx in live:
            ctx.on_step(min(step + 1, total), total)
            ctx.report(self.start + (self.end - self.start) * min(1.0, (step + 1) / total))
        return callback_kwargs


def run_diffusion_batch(pipe: Any, contexts: list[RunContext], prompts: list[str],
                        negative_prompts: list[str], *, start: float = 0.0, end: float = 1.0,
                        **kwargs: Any) -> list[Image.Image | Cancelled]:
    """One image per job (or the job's `Cancelled`), in the order of `contexts`."""
    results: list[Image.Image | Cancelled | None] = [None] * len(contexts)
    embeddings = [prompt_embeddings(pipe, p, n) for p, n in zip(prompts, negative_prompts)]
    groups: dict[tuple, list[int]] = {}
    for i, found in enumerate(embeddings):
        groups.setdefault(tuple(found["prompt_embeds"].shape), []).append(i)
    steps = int(kwargs.get("num_inference_steps", 1))
    if kwargs.get("width") and kwargs.get("height"):
        prepare_vae_for_size(pipe, int(kwargs["width"]), int(kwargs["height"]))
    for members in groups.values():
        batch_contexts = [contexts[i] for i in members]
        joined = {key: torch.cat([embeddings[i][key] for i in members])
                  for key in EMBEDDING_KEYS}
        try:
            images = pipe(generator=[ctx.generator() for ctx in batch_contexts],
                          output_type="pil",
                          callback_on_step_end=_BatchProgress(batch_contexts, start, end, steps),
                          **joined, **kwargs).images
        except Cancelled as exc:
            images = [exc] * len(members)
        for i, image in zip(members, images):
            cancelled = isinstance(image, Cancelled) or contexts[i].is_cancelled()
            results[i] = Cancelled("the job was cancelled") if cancelled else image.convert("RGB")
    return results  # type: ignore[return-value]

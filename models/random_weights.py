"""Full-size random twins: the production classes built from their published configs with random
weights, constructed directly on the target device in the target dtype (`torch.device(device)` and
the default dtype around the constructor: no CPU copy, no cast). On `meta` nothing is allocated,
which is how the tests check the real architectures on a CPU machine.

Each model draws from its own generator seeded by `component_seed(seed, label)`, so a twin does
not depend on which other models were built before it. Configs live under `configs/` (package
data; docs/models.md names the published file each one is). Tokenizers are built offline with the
real vocabulary sizes and special-token ids (`clip_tokenizer`, `qwen_tokenizer`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from retouch.models.registry import RANDOM_PREFIX, ModelSpec

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"


def config_dir(spec: ModelSpec) -> Path:
    """The packaged config folder of a `random:<name>` spec."""
    return CONFIG_ROOT / spec.source[len(RANDOM_PREFIX):]


def component_seed(seed: int, label: str) -> int:
    """A seed per model (and per pipeline component), stable across runs and build orders."""
    return (seed * 1_000_003 + zlib.crc32(label.encode())) % (1 << 63)


@contextlib.contextmanager
def seeded_init(device: torch.device | str, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Modules constructed in the block land on `device` in `dtype`, initialised from `seed`;
    the caller's RNG state and default dtype are restored afterwards."""
    device = torch.device(device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                yield
        finally:
            torch.set_default_dtype(previous)


@contextlib.contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """A published config carries keys the class no longer takes (e.g. the inpaint UNet's EMA
    fields): loading the real file warns the same way, and it is noise here."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


# --- models --------------------------------------------------------------------------------------

def diffusers_model(cls: Any, folder: Path, device: torch.device | str, dtype: torch.dtype,
                    seed: int) -> Any:
    """A diffusers model (`UNet2DConditionModel`, `AutoencoderKL`, `ControlNetModel`, ...) from
    the `config.json` in `folder`."""
    with _quiet_library_logs():
        config = cls.load_config(str(folder))
        with seeded_init(device, dtype, seed):
            model = cls.from_config(config)
    return model.eval()


def transformers_model(cls: Any, folder: Path, device: torch.device | str, dtype: torch.dtype,
                       seed: int) -> Any:
    """A transformers model from the `config.json` in `folder`; `cls` is a concrete model class
    or an `AutoModel...` class."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    build: Callable[[Any], Any] = cls.from_config if hasattr(cls, "from_config") else cls
    with seeded_init(device, dtype, seed):
        model = build(config)
    return model.eval()


def realesrgan_state_dict(options: Mapping[str, Any], device: torch.device | str,
                          dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a freshly initialised Real-ESRGAN network with `options`' arch config."""
    from retouch.models.realesrgan_arch import build_network

    config = dict(options)
    arch = config.pop("arch")
    with seeded_init(device, dtype, seed):
        network = build_network(arch, **config)
    return network.state_dict()


def ip_adapter_state_dict(unet: Any, image_embed_dim: int, device: torch.device | str,
                          dtype: torch.dtype, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """IP-Adapter weights in the original layout, shaped after `unet`, on `device`."""
    from retouch.models.ip_adapter_layout import group_ip_adapter_tensors, ip_adapter_tensors

    device = torch.device(device)
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(seed)
    return group_ip_adapter_tensors(
        ip_adapter_tensors(unet, image_embed_dim, generator, device=device, dtype=dtype))


def diffusion_pipeline(pipeline_cls: Any, folder: Path, device: torch.device | str,
                       dtype: torch.dtype, seed: int) -> Any:
    """`pipeline_cls` assembled from the components `model_index.json` in `folder` names (each
    built from its own config) plus the pipeline options recorded there."""
    index = json.loads((folder / "model_index.json").read_text())
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        if entry[0] is None:  # a component the checkpoint leaves out (a safety checker)
            components[name] = None
            continue
        library, class_name = entry
        cls = getattr(importlib.import_module(library), class_name)
        if name.startswith("tokenizer"):
            encoder_folder = folder / name.replace("tokenizer", "text_encoder")
            components[name] = clip_tokenizer(folder / name, encoder_folder)
        elif name == "scheduler":
            components[name] = cls.from_pretrained(str(folder), subfolder=name)
        elif library == "diffusers":
            components[name] = diffusers_model(cls, folder / name, device, dtype,
                                               component_seed(seed, name))
        else:
            components[name] = transformers_model(cls, folder / name, device, dtype,
                                                  component_seed(seed, name))
    options = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    return pipeline_cls(**components, **options)


# --- tokenizers ----------------------------------------------------------------------------------

def _filled_vocab(tokens: list[str], size: int, filler: Callable[[int], str]) -> dict[str, int]:
    """`tokens` (deduplicated, in order) padded with `filler(i)` entries to exactly `size`. The
    fillers are never produced by a merge, so they only matter as embedding rows and decodable
    ids (a random language model emits them)."""
    vocab = dict.fromkeys(tokens)
    index = 0
    while len(vocab) < size:
        vocab.setdefault(filler(index))
        index += 1
    if len(vocab) != size:
        raise ValueError(f"{len(vocab)} base tokens do not fit a vocabulary of {size}")
    return {token: i for i, token in enumerate(vocab)}


def clip_tokenizer(tokenizer_folder: Path, encoder_folder: Path) -> Any:
    """A byte-level CLIP BPE tokenizer with the text encoder's vocabulary size, `<|startoftext|>`
    and `<|endoftext|>` as its last two ids (as in CLIP's vocabulary), the published padding token
    and the encoder's context length. Its merges cover only a small word list, so real text splits
    into more tokens than with CLIP's 48,894 merges."""
    from transformers import CLIPTextConfig, CLIPTokenizer

    from retouch.models.tiny import COMMON_WORDS, bpe_tokenizer, byte_alphabet, word_merges

    encoder = CLIPTextConfig.from_pretrained(str(encoder_folder))
    special = json.loads((tokenizer_folder / "special_tokens_map.json").read_text())
    alphabet = byte_alphabet()
    merges = word_merges(COMMON_WORDS, "</w>")
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = _filled_vocab(tokens, encoder.vocab_size - len(specials), lambda i: f"unused{i}</w>")
    vocab.update({token: len(vocab) + i for i, token in enumerate(specials)})
    with tempfile.TemporaryDirectory() as scratch:
        return bpe_tokenizer(Path(scratch), CLIPTokenizer, vocab, merges,
                             pad_token=_token_content(special["pad_token"]),
                             model_max_length=encoder.max_position_embeddings)


def qwen_tokenizer(model_folder: Path) -> Any:
    """A byte-level Qwen2 tokenizer whose regular tokens fill ids 0..bos_token_id-1 and whose
    `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` have Qwen2.5's ids (bos_token_id, +1, +2), with
    the ChatML template. The model's embedding has `vocab_size` rows (padded, as published)."""
    from transformers import AutoConfig, Qwen2Tokenizer

    from retouch.models.tiny import (COMMON_WORDS, QWEN_CHAT_TEMPLATE, bpe_tokenizer,
                                     byte_alphabet, word_merges)

    config = AutoConfig.from_pretrained(str(model_folder))
    alphabet = byte_alphabet()
    space = alphabet[ord(" ")]
    merges = word_merges(tuple(space + w for w in COMMON_WORDS), "")
    tokens = alphabet + ["".join(m) for m in merges]
    vocab = _filled_vocab(tokens, config.bos_token_id, lambda i: f"{space}unused{i}")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab.update({token: config.bos_token_id + i for i, token in enumerate(specials)})
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = bpe_tokenizer(Path(scratch), Qwen2Tokenizer, vocab, merges,
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token=None, model_max_length=config.max_position_embeddings)
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _token_content(token: str | Mapping[str, Any]) -> str:
    return token if isinstance(token, str) else token["content"]

"""Deterministic builder of the tiny model twins (CPU, tests, embedded default).

Every twin is the production class built from a small config with a fixed seed, saved with
`save_pretrained` (or `torch.save` for Real-ESRGAN `.pth` files) and later loaded through the same
`from_pretrained` path as the real checkpoints. Tokenizers are written from vocab/merges made
here, so nothing touches the network. A marker file records the builder version; the cache is
rebuilt only when the marker is missing or stale.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from pathlib import Path

import torch

from retouch.models.registry import (ADE20K_LABELS, SEGFORMER_CLOTHES_LABELS, TINY_RRDB,
                                     TINY_SOURCES, TINY_SRVGG, TINY_U2NET)

BUILDER_VERSION = "5"  # bump whenever any twin changes: caches rebuild on a new version
MARKER_NAME = "BUILD_VERSION"
TINY_DIR_NAME = "tiny"

# Text encoders: CLIP hidden 32, two of them (SDXL) → UNet cross-attention width 64.
CLIP_HIDDEN = 32
ADDITION_TIME_EMBED_DIM = 8
TEXT_MAX_LENGTH = 77
COMMON_WORDS = ("a", "the", "photo", "of", "in", "with", "and", "on", "person", "light",
                "portrait", "street", "night", "day", "woman", "man", "city", "room", "sky")


def tiny_root(cache_dir: Path | str) -> Path:
    return Path(cache_dir) / TINY_DIR_NAME


def tiny_cache_is_current(cache_dir: Path | str) -> bool:
    marker = tiny_root(cache_dir) / MARKER_NAME
    return marker.is_file() and marker.read_text().strip() == BUILDER_VERSION


def build_tiny_models(cache_dir: Path | str, *, force: bool = False) -> Path:
    """Build every tiny twin under `<cache_dir>/tiny` (idempotent) and return that directory.

    A file lock serialises concurrent builders (test workers, Ray replicas); the build goes to a
    temporary sibling that is renamed into place, so a reader never sees a half-written cache.
    """
    root = tiny_root(cache_dir)
    if not force and tiny_cache_is_current(cache_dir):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".tiny-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and tiny_cache_is_current(cache_dir):
            return root  # another process built it while we waited
        staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root.parent))
        try:
            _build_all(staging)
            (staging / MARKER_NAME).write_text(BUILDER_VERSION + "\n")
            if root.exists():
                old = Path(tempfile.mkdtemp(prefix=".tiny-old-", dir=root.parent))
                root.rename(old / TINY_DIR_NAME)
                shutil.rmtree(old, ignore_errors=True)
            staging.rename(root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return root


def _build_all(out: Path) -> None:
    from transformers.utils import logging as transformers_logging

    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # "Writing model shards" bars are noise here
    try:
        _build_each(out)
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()


def _build_each(out: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        base_unet = _save_sdxl_base(out / TINY_SOURCES["base"])
        _save_sdxl_inpaint(out / TINY_SOURCES["inpaint"])
        _save_controlnet(out / TINY_SOURCES["controlnet_depth"], seed=11)
        _save_controlnet(out / TINY_SOURCES["controlnet_canny"], seed=12)
        _save_depth_anything(out / TINY_SOURCES["depth"])
        _save_segformer(out / TINY_SOURCES["segmenter"])
        _save_upernet(out / TINY_SOURCES["scene_segmenter"])
        _save_u2net(out / TINY_SOURCES["matting"])
        _save_planner(out / TINY_SOURCES["planner"])
        _save_speecht5(out)
        _save_riffusion(out / TINY_SOURCES["music"])
        _save_realesrgan(out)
        _save_ip_adapter(out / TINY_SOURCES["ip_adapter"], base_unet)


# --- tokenizers -------------------------------------------------------------------------------

def byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table: 256 printable characters, one per byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def word_merges(words: tuple[str, ...], suffix: str) -> list[tuple[str, str]]:
    """Left-to-right merges that assemble each word (with `suffix` on its last symbol)."""
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + suffix]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
    return merges


def bpe_tokenizer(out: Path, tokenizer_class, vocab: dict[str, int],
                   merges: list[tuple[str, str]], **options):
    """`tokenizer_class` loaded from `vocab` and `merges` written to a scratch folder under
    `out` (removed again)."""
    files = out / "_tokenizer_src"
    files.mkdir(parents=True, exist_ok=True)
    (files / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (files / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = tokenizer_class(vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"),
                                **options)
    shutil.rmtree(files)
    return tokenizer


def _clip_tokenizer(out: Path):
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    merges = word_merges(COMMON_WORDS, "</w>")
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    tokenizer = bpe_tokenizer(out, CLIPTokenizer, vocab, merges,
                               model_max_length=TEXT_MAX_LENGTH)
    return tokenizer, vocab


def _qwen_tokenizer(out: Path):
    from transformers import Qwen2Tokenizer

    alphabet = byte_alphabet()
    space = alphabet[ord(" ")]
    merges = word_merges(tuple(space + w for w in COMMON_WORDS), "")
    tokens = alphabet + ["".join(m) for m in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    tokenizer = bpe_tokenizer(out, Qwen2Tokenizer, vocab, merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", unk_token=None, model_max_length=2048)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens(["<|endoftext|>"], special_tokens=True)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


# The ChatML template Qwen2.5 instruct models use (without tool calls).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- diffusion --------------------------------------------------------------------------------

def _text_encoders(out: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, vocab = _clip_tokenizer(out)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=CLIP_HIDDEN, intermediate_size=37,
        num_hidden_layers=3, num_attention_heads=4, projection_dim=CLIP_HIDDEN,
        max_position_embeddings=TEXT_MAX_LENGTH, hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(config).eval()
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModelWithProjection(config).eval()
    return tokenizer, text_encoder, text_encoder_2


def _unet(in_channels: int, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=ADDITION_TIME_EMBED_DIM * 6 + CLIP_HIDDEN,
        cross_attention_dim=2 * CLIP_HIDDEN, norm_num_groups=8)


def _vae(seed: int = 3, scaling_factor: float = 0.13025, blocks: int = 4):
    """Four narrow blocks keep SDXL's 8x latent scale at a fraction of the cost (each further
    block halves the latent again)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(8,) + (16,) * (blocks - 1),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, norm_num_groups=8, sample_size=64,
        scaling_factor=scaling_factor, force_upcast=False)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", steps_offset=1,
                                  timestep_spacing="leading", prediction_type="epsilon")


def _save_sdxl_base(out: Path):
    """Save the base pipeline; returns its UNet (the IP-Adapter twin is shaped after it)."""
    from diffusers import StableDiffusionXLPipeline

    tokenizer, text_encoder, text_encoder_2 = _text_encoders(out)
    unet = _unet(4, seed=4)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler())
    pipe.save_pretrained(out)
    return unet


def _save_sdxl_inpaint(out: Path) -> None:
    from diffusers import StableDiffusionXLInpaintPipeline

    tokenizer, text_encoder, text_encoder_2 = _text_encoders(out)
    pipe = StableDiffusionXLInpaintPipeline(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=_unet(9, seed=5),
        scheduler=_scheduler(), requires_aesthetics_score=False)
    pipe.save_pretrained(out)


def _save_riffusion(out: Path) -> None:
    """Riffusion's layout (Stable Diffusion 1.5: one CLIP text encoder, a UNet without SDXL's
    added time embeddings, the 0.18215 VAE scale, PNDM) with the tiny widths and no safety
    checker. Its spectrograms are always 512×512, so the VAE has a fifth block (a 32×32
    latent instead of 64×64): the tiny UNet runs ten times faster on CPU."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text_encoder, _ = _text_encoders(out)
    torch.manual_seed(18)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        cross_attention_dim=CLIP_HIDDEN, norm_num_groups=8)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    StableDiffusionPipeline(
        vae=_vae(seed=19, scaling_factor=0.18215, blocks=5), text_encoder=text_encoder,
        tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False).save_pretrained(out)


def _save_controlnet(out: Path, seed: int) -> None:
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=ADDITION_TIME_EMBED_DIM * 6 + CLIP_HIDDEN,
        cross_attention_dim=2 * CLIP_HIDDEN, norm_num_groups=8,
        # Four stages (three stride-2 convs) map the control image to the 1/8 latent grid.
        conditioning_embedding_out_channels=(8, 8, 16, 16))
    controlnet.save_pretrained(out)


# --- transformers models ----------------------------------------------------------------------

def _save_depth_anything(out: Path) -> None:
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                              Dinov2Config)
    from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil

    backbone = Dinov2Config(image_size=56, patch_size=14, hidden_size=16, num_hidden_layers=4,
                            num_attention_heads=2, intermediate_size=32,
                            out_features=["stage1", "stage2", "stage3", "stage4"],
                            apply_layernorm=True, reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14,
                                 reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 16, 16],
                                 fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(6)
    model = DepthAnythingForDepthEstimation(config).eval()
    # The default 0.02-std init collapses the output to ~1e-7; He init gives a usable depth range.
    for module in [*model.neck.fusion_stage.modules(), *model.head.modules()]:
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    model.save_pretrained(out)
    DPTImageProcessorPil(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True,
        ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_pad=False).save_pretrained(out)


def _save_segformer(out: Path) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from transformers.models.segformer.image_processing_pil_segformer import (
        SegformerImageProcessorPil)

    id2label = dict(enumerate(SEGFORMER_CLOTHES_LABELS))
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
        hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=16,
        num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(7)
    SegformerForSemanticSegmentation(config).eval().save_pretrained(out)
    SegformerImageProcessorPil(
        do_resize=True, size={"height": 64, "width": 64}, do_rescale=True, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_reduce_labels=False).save_pretrained(out)


def upernet_config(depths: list[int], hidden_sizes: list[int], **options):
    """An ADE20K UperNet + ConvNeXt config as transformers' conversion script builds the
    openmmlab checkpoints (150 labels, four backbone stages feeding the head)."""
    from transformers import ConvNextConfig, UperNetConfig

    id2label = dict(enumerate(ADE20K_LABELS))
    backbone = ConvNextConfig(depths=depths, hidden_sizes=hidden_sizes,
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    return UperNetConfig(backbone_config=backbone, num_labels=len(id2label), id2label=id2label,
                         label2id={v: k for k, v in id2label.items()}, **options)


def _save_upernet(out: Path) -> None:
    from transformers import UperNetForSemanticSegmentation
    from transformers.models.segformer.image_processing_pil_segformer import (
        SegformerImageProcessorPil)

    config = upernet_config([1, 1, 1, 1], [8, 16, 24, 32], hidden_size=16,
                            auxiliary_in_channels=24, auxiliary_channels=8)
    torch.manual_seed(13)
    UperNetForSemanticSegmentation(config).eval().save_pretrained(out)
    SegformerImageProcessorPil(
        do_resize=True, size={"height": 64, "width": 64}, do_rescale=True, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_reduce_labels=False).save_pretrained(out)


def _save_u2net(path: Path) -> None:
    """A `.pth` state dict in the official U²-Net layout, tiny widths."""
    from retouch.models.u2net_arch import build_u2net

    torch.manual_seed(14)
    network = build_u2net(**TINY_U2NET)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)


def _save_planner(out: Path) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = _qwen_tokenizer(out)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    torch.manual_seed(8)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


TINY_SPEAKER_DIM = 8


def _save_speecht5(out: Path) -> None:
    """SpeechT5 text-to-speech, its HiFi-GAN vocoder (16 kHz, SpeechT5's 256-sample hop) and a
    speaker x-vector. The stop head is biased off, so the twin always speaks for the longest
    time it is allowed (`SpeechSynthesizer`'s cap): voice-over lengths are predictable in tests."""
    import numpy as np
    from transformers import (SpeechT5Config, SpeechT5ForTextToSpeech, SpeechT5HifiGan,
                              SpeechT5HifiGanConfig)

    from retouch.models.speech import char_tokenizer

    folder = out / TINY_SOURCES["speech"]
    tokenizer = char_tokenizer(folder / "_spm")
    config = SpeechT5Config(
        vocab_size=len(tokenizer), hidden_size=16, encoder_layers=1, encoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        num_mel_bins=8, speech_decoder_prenet_units=16, speaker_embedding_dim=TINY_SPEAKER_DIM,
        speech_decoder_postnet_layers=2, speech_decoder_postnet_units=16,
        encoder_max_relative_position=16)
    torch.manual_seed(15)
    model = SpeechT5ForTextToSpeech(config).eval()
    with torch.no_grad():
        model.speech_decoder_postnet.prob_out.bias.fill_(-10.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder / "_spm")
    torch.manual_seed(16)
    SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=8, sampling_rate=16_000, upsample_initial_channel=8, upsample_rates=[16, 16],
        upsample_kernel_sizes=[32, 32], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
    )).eval().save_pretrained(out / TINY_SOURCES["vocoder"])
    speaker = np.random.default_rng(17).standard_normal(TINY_SPEAKER_DIM).astype(np.float32)
    np.save(out / TINY_SOURCES["speaker"], speaker / np.linalg.norm(speaker))


# --- Real-ESRGAN --------------------------------------------------------------------------------

def _save_realesrgan(out: Path) -> None:
    from retouch.models.realesrgan_arch import build_network

    rrdb = {k: v for k, v in TINY_RRDB.items() if k != "arch"}
    srvgg = {k: v for k, v in TINY_SRVGG.items() if k != "arch"}
    networks = {
        "realesrgan_x2plus": (build_network, "RRDBNet", dict(rrdb, scale=2), 21),
        "realesrgan_x4plus": (build_network, "RRDBNet", dict(rrdb, scale=4), 22),
        "realesr_general_x4v3": (build_network, "SRVGGNetCompact", srvgg, 23),
        "realesr_general_wdn_x4v3": (build_network, "SRVGGNetCompact", srvgg, 24),
    }
    for name, (build, arch, config, seed) in networks.items():
        torch.manual_seed(seed)
        network = build(arch, **config)
        if arch == "SRVGGNetCompact":
            _shrink_residual_branch(network)
        path = out / TINY_SOURCES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"params_ema": network.state_dict()}, path)


def _shrink_residual_branch(network: torch.nn.Module) -> None:
    """Scale the last conv down so a random twin stays close to a nearest-neighbour upscale
    (plausible images, values in range) while still depending on its weights."""
    last = list(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))[-1]
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.zero_()


# --- IP-Adapter -------------------------------------------------------------------------------

def _save_ip_adapter(out: Path, unet) -> None:
    """A CLIP vision encoder (`image_encoder/`) and `ip-adapter_sdxl.safetensors` in the original
    IP-Adapter layout (`retouch.models.ip_adapter_layout`), shaped after the tiny UNet."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from retouch.models.ip_adapter_layout import ip_adapter_tensors

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32,
                              num_hidden_layers=2, num_attention_heads=4, image_size=32,
                              patch_size=8)
    torch.manual_seed(9)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(out / "image_encoder")
    tensors = ip_adapter_tensors(unet, config.projection_dim, torch.Generator().manual_seed(10))
    save_file({k: v.contiguous() for k, v in tensors.items()},
              out / "ip-adapter_sdxl.safetensors", metadata={"format": "pt"})

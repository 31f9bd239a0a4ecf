"""The original IP-Adapter checkpoint layout (`ip-adapter_sdxl.safetensors`), shared by the tiny
twin (written to a file) and the random twin (built in memory).

Keys: `image_proj.proj.{weight,bias}` and `image_proj.norm.{weight,bias}` (CLIP image embedding →
`IP_ADAPTER_TOKENS` image tokens of the UNet's cross-attention width), and, for the k-th
cross-attention layer of the UNet in `attn_processors` order, `ip_adapter.{2k+1}.to_{k,v}_ip.weight`.
"""

from __future__ import annotations

from typing import Any

import torch

IP_ADAPTER_TOKENS = 4  # ip-adapter_sdxl: 4 image tokens from the CLIP image embedding


def ip_adapter_tensors(unet: Any, image_embed_dim: int, generator: torch.Generator | None, *,
                       device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Random adapter weights shaped after `unet` for an image encoder projecting to
    `image_embed_dim`; linear weights are N(0, 1/fan_in), the norm is the identity."""
    cross_attention_dim = unet.config.cross_attention_dim

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=generator, device=device, dtype=dtype) / cols ** 0.5

    def filled(value: float, size: int) -> torch.Tensor:
        return torch.full((size,), value, device=device, dtype=dtype or torch.float32)

    tensors = {
        "image_proj.proj.weight": linear(IP_ADAPTER_TOKENS * cross_attention_dim, image_embed_dim),
        "image_proj.proj.bias": filled(0.0, IP_ADAPTER_TOKENS * cross_attention_dim),
        "image_proj.norm.weight": filled(1.0, cross_attention_dim),
        "image_proj.norm.bias": filled(0.0, cross_attention_dim),
    }
    modules = dict(unet.named_modules())
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden_size = modules[name[:-len(".processor")]].to_k.out_features
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = linear(hidden_size, cross_attention_dim)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = linear(hidden_size, cross_attention_dim)
        key_id += 2
    return tensors


def group_ip_adapter_tensors(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """`{"image_proj": {...}, "ip_adapter": {...}}`, the state dict `load_ip_adapter` takes."""
    grouped: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        group, _, rest = key.partition(".")
        if group in grouped:
            grouped[group][rest] = tensor
    return grouped

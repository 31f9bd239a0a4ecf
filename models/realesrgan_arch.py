"""Torch-only Real-ESRGAN networks whose parameter names equal the official `.pth` files.

`RRDBNet` (RealESRGAN_x4plus / x2plus) and `SRVGGNetCompact` (realesr-general-x4v3 and its
`wdn` twin) follow the reference definitions (basicsr `rrdbnet_arch.py`, Real-ESRGAN
`srvgg_arch.py`) layer for layer, so `load_state_dict(strict=True)` accepts the released
weights. No torchvision: scale 2 uses `F.pixel_unshuffle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


class ResidualDenseBlock(nn.Module):
    """Five 3×3 convs with dense connections; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator. Official configs: x4plus `RRDBNet(3, 3, 64, 23, 32, scale=4)`,
    x2plus the same with `scale=2` (the input is pixel-unshuffled by 2 first)."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, scale: int = 4):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, got {scale}")
        self.scale = scale
        unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * unshuffle * unshuffle, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 2:
            feat = F.pixel_unshuffle(x, 2)
        elif self.scale == 1:
            feat = F.pixel_unshuffle(x, 4)
        else:
            feat = x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style SR net: `num_conv` 3×3 convs with activations in `body`, pixel shuffle,
    plus a nearest-upsampled copy of the input. Official realesr-general-x4v3:
    `SRVGGNetCompact(3, 3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")`."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1),
                                   _activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(_activation(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"unknown act_type {act_type!r}")


ARCHITECTURES: dict[str, type[nn.Module]] = {"RRDBNet": RRDBNet,
                                             "SRVGGNetCompact": SRVGGNetCompact}


def build_network(arch: str, **config: Any) -> nn.Module:
    """`build_network("RRDBNet", num_block=23, scale=4)` → an untrained network."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown Real-ESRGAN architecture {arch!r}") from None
    return cls(**config)


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The network weights of an official `.pth`: `params_ema` if present, else `params`
    (or the bare state dict)."""
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in ("params_ema", "params"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            return checkpoint[key]
    return checkpoint


def load_network(path: Path | str, arch: str, **config: Any) -> nn.Module:
    """Build `arch` with `config` and load the `.pth` at `path` with `strict=True`; eval mode."""
    network = build_network(arch, **config)
    network.load_state_dict(read_state_dict(path), strict=True)
    return network.eval()


def interpolate_state_dicts(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                            first_weight: float) -> dict[str, torch.Tensor]:
    """Deep network interpolation (DNI): `first_weight * first + (1 - first_weight) * second`,
    key by key. Used for realesr-general-x4v3 (strong denoise) vs its wdn twin (weak denoise)."""
    if first.keys() != second.keys():
        raise ValueError("cannot interpolate networks with different parameter names")
    return {name: first_weight * first[name] + (1.0 - first_weight) * second[name]
            for name in first}

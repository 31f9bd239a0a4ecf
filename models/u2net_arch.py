"""U²-Net (Qin et al. 2020, Apache-2.0) with the official state-dict keys, parametrised by width.

The official `model/u2net.py` spells each residual U-block out (`RSU7` ... `RSU4F`); here one
`RSU(height, ...)` builds them all with the same attribute names (`rebnconvin`, `rebnconv1`...,
`rebnconv1d`), so the released `u2net.pth` loads with `strict=True`. `U2NET(encoder, decoder)`
takes the (mid, out) channels of the six encoder and five decoder stages: the registry holds the
published widths (`U2NET_CONFIG`) and the tiny twin's.

`salient_alpha(network, image)` runs the official inference recipe: 320×320, divide by the
maximum, ImageNet mean/std, first (fused) output, min-max normalised, resized to the image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

INPUT_SIZE = 320
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class REBNCONV(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def _upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


class RSU(nn.Module):
    """Residual U-block of `height` levels (RSU7..RSU4); `dilated` is RSU4F (no pooling, the
    levels dilated 1, 2, 4, 8 instead)."""

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int, dilated: bool = False):
        super().__init__()
        self.height, self.dilated = height, dilated
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        for level in range(1, height + 1):
            rate = 2 ** (level - 1) if dilated else (2 if level == height else 1)
            setattr(self, f"rebnconv{level}",
                    REBNCONV(out_ch if level == 1 else mid_ch, mid_ch, dirate=rate))
        for level in range(height - 1, 0, -1):
            rate = 2 ** (level - 1) if dilated else 1
            setattr(self, f"rebnconv{level}d",
                    REBNCONV(mid_ch * 2, out_ch if level == 1 else mid_ch, dirate=rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips, hx = [], hxin
        for level in range(1, self.height):
            hx = getattr(self, f"rebnconv{level}")(hx)
            skips.append(hx)
            if not self.dilated and level < self.height - 1:
                hx = F.max_pool2d(hx, 2, stride=2, ceil_mode=True)
        hx = getattr(self, f"rebnconv{self.height}")(hx)
        for level in range(self.height - 1, 0, -1):
            skip = skips[level - 1]
            if hx.shape[2:] != skip.shape[2:]:
                hx = _upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{level}d")(torch.cat((hx, skip), 1))
        return hx + hxin


# Heights of the encoder stages 1..6 and the decoder stages 5d..1d (0: the dilated RSU4F).
ENCODER_HEIGHTS = (7, 6, 5, 4, 0, 0)
DECODER_HEIGHTS = (0, 4, 5, 6, 7)


def _rsu(height: int, in_ch: int, mid_ch: int, out_ch: int) -> RSU:
    return RSU(4, in_ch, mid_ch, out_ch, dilated=True) if height == 0 else RSU(
        height, in_ch, mid_ch, out_ch)


class U2NET(nn.Module):
    def __init__(self, in_ch: int = 3, out_ch: int = 1,
                 encoder: Sequence[Sequence[int]] = (), decoder: Sequence[Sequence[int]] = ()):
        super().__init__()
        if len(encoder) != 6 or len(decoder) != 5:
            raise ValueError("U2NET needs 6 encoder and 5 decoder (mid, out) pairs")
        channels = in_ch
        for i, (height, (mid, out)) in enumerate(zip(ENCODER_HEIGHTS, encoder), start=1):
            setattr(self, f"stage{i}", _rsu(height, channels, mid, out))
            channels = out
        enc_out = [out for _, out in encoder]
        below = enc_out[5]
        side_in = {6: enc_out[5]}
        for stage, height, (mid, out) in zip((5, 4, 3, 2, 1), DECODER_HEIGHTS, decoder):
            setattr(self, f"stage{stage}d", _rsu(height, below + enc_out[stage - 1], mid, out))
            side_in[stage], below = out, out
        for stage in range(1, 7):
            setattr(self, f"side{stage}", nn.Conv2d(side_in[stage], out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused saliency map (sigmoid), (N, out_ch, H, W); the side outputs are dropped."""
        skips, hx = [], x
        for stage in range(1, 7):
            hx = getattr(self, f"stage{stage}")(hx)
            skips.append(hx)
            if stage < 6:
                hx = F.max_pool2d(hx, 2, stride=2, ceil_mode=True)
        decoded = {6: skips[5]}
        hx = skips[5]
        for stage in (5, 4, 3, 2, 1):
            skip = skips[stage - 1]
            hx = getattr(self, f"stage{stage}d")(torch.cat((_upsample_like(hx, skip), skip), 1))
            decoded[stage] = hx
        d1 = self.side1(decoded[1])
        sides = [d1] + [_upsample_like(getattr(self, f"side{s}")(decoded[s]), d1)
                        for s in range(2, 7)]
        return torch.sigmoid(self.outconv(torch.cat(sides, 1)))


def build_u2net(**config) -> U2NET:
    config = dict(config)
    arch = config.pop("arch", "U2NET")
    if arch != "U2NET":
        raise ValueError(f"unknown matting arch {arch!r}")
    return U2NET(**config)


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The official `.pth` is a bare state dict (saved from a `DataParallel`-free model)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in state.items()}


@torch.inference_mode()
def salient_alpha(network: nn.Module, image: Image.Image) -> np.ndarray:
    """Float32 H×W alpha in [0, 1] (1 = the salient object) at `image`'s size."""
    parameter = next(network.parameters())
    rgb = image.convert("RGB")
    small = np.asarray(rgb.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR), dtype=np.float32)
    small = small / max(float(small.max()), 1e-6)
    small = (small - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    tensor = torch.from_numpy(small.transpose(2, 0, 1)[None]).to(parameter.device,
                                                                 parameter.dtype)
    pred = network(tensor)[:, :1].float()
    lo, hi = pred.min(), pred.max()
    pred = (pred - lo) / (hi - lo) if float(hi - lo) > 1e-6 else torch.zeros_like(pred)
    pred = F.interpolate(pred, size=(rgb.height, rgb.width), mode="bilinear",
                         align_corners=False)
    return pred[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)

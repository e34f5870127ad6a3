"""Wave-ViT's wavelet attention, its convolutional FFN, and the Wavelet Transformer Block (WTB)."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from irblocks.clusir.haar import DWT, IDWT
from irblocks.errors import InputError, check_feature
from irblocks.norm import ChannelLayerNorm
from irblocks.registry import Context, register

__all__ = ["WaveAttention", "WaveFFN", "WaveletBlock"]


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C): a view (no copy) for channels_last input."""
    return x.permute(0, 2, 3, 1)


def _from_tokens(t: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view (channels_last when t is contiguous)."""
    return t.permute(0, 3, 1, 2)


@register("block", "wave_attention", aliases=("wavelet_attention",))
class WaveAttention(nn.Module):
    """Wave-ViT attention: queries from every pixel, keys/values from a wavelet-downsampled map.

    q = Linear(x). Key/value path: 1x1 conv C -> C/4 + BatchNorm + ReLU; DWT
    (Haar) -> C channels at half size; conv3x3 C -> C + BatchNorm + ReLU; a
    stride-``sr`` conv (kernel sr) when ``sr > 1`` (Wave-ViT: 4, 2, 1, 1 per
    stage; the map is zero-padded to a multiple of sr first so any size works);
    LayerNorm + Linear C -> 2C. Multi-head softmax attention (scale d^-0.5).
    The inverse DWT of the filtered map (C/4 channels, full size) is
    concatenated to the attention output before the projection (C + C/4 -> C).

    Deviations from the released Wave-ViT code: filters stay float32 (the
    original casts them to fp16) and odd sizes are zero-padded for the DWT and
    cropped back after the IDWT (the original breaks on odd sizes).

    Args: dim (context; a multiple of 4), heads (context), sr: key/value
        reduction stride (per-level list in recipes), wave: wavelet (``haar``
        uses the butterfly kernel), bias: Linear biases (Wave-ViT: True),
        eps: LayerNorm eps.

    Shapes: (B, C, H, W) -> (B, C, H, W). Attention cost: H*W x H*W / (4 sr^2).
    """

    def __init__(self, dim: Context[int], heads: Context[int] = 1, sr: Annotated[int, Ge(1)] = 1,
                 wave: str = "haar",
                 bias: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % 4:
            raise ValueError(f"wave_attention: dim must be a multiple of 4 (C/4 channels are "
                             f"transformed), got {dim}")
        if heads < 1 or dim % heads:
            raise ValueError(f"wave_attention: heads={heads} must divide dim={dim}")
        self.dim, self.heads, self.sr = dim, heads, sr
        self.q = nn.Linear(dim, dim, bias=bias)
        self.reduce = nn.Sequential(nn.Conv2d(dim, dim // 4, 1), nn.BatchNorm2d(dim // 4),
                                    nn.ReLU(inplace=True))
        self.dwt = DWT(wave)
        self.idwt = IDWT(wave)
        self.filter = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim),
                                    nn.ReLU(inplace=True))
        self.kv_embed = nn.Conv2d(dim, dim, sr, stride=sr) if sr > 1 else nn.Identity()
        self.kv_norm = nn.LayerNorm(dim, eps=eps)
        self.kv = nn.Linear(dim, dim * 2, bias=bias)
        self.proj = nn.Linear(dim + dim // 4, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature(x, self.dim, "wave_attention input")
        b, c, h, w = x.shape
        if self.training and b * ((h + 1) // 2) * ((w + 1) // 2) == 1:
            raise InputError("wave_attention: BatchNorm in train mode needs more than one value "
                             "per channel, got B x H/2 x W/2 = 1 x 1 x 1 after the DWT of a "
                             f"{h}x{w} map (in a U-Net the latent is H/8 x W/8: train with inputs "
                             "of at least 32x32 or a batch > 1)")
        hd = c // self.heads
        q = self.q(_tokens(x)).reshape(b, h * w, self.heads, hd).transpose(1, 2)    # B, h, N, d
        x_dwt = self.filter(self.dwt(self.reduce(x)))                                # B, C, h2, w2
        x_idwt = self.idwt(x_dwt, (h, w))                                            # B, C/4, H, W
        kv_in = x_dwt
        if self.sr > 1:
            ph, pw = (-kv_in.shape[-2]) % self.sr, (-kv_in.shape[-1]) % self.sr
            if ph or pw:
                kv_in = F.pad(kv_in, (0, pw, 0, ph))
            kv_in = self.kv_embed(kv_in)
        kv = self.kv(self.kv_norm(_tokens(kv_in)))                                   # B, h', w', 2C
        m = kv.shape[1] * kv.shape[2]
        k, v = kv.reshape(b, m, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)                                # B, h, N, d
        out = out.transpose(1, 2).reshape(b, h, w, c)
        out = self.proj(torch.cat([out, _tokens(x_idwt)], dim=-1))
        return _from_tokens(out)

    def extra_repr(self) -> str:
        return f"{self.dim}, heads={self.heads}, sr={self.sr}"


@register("block", "wave_ffn", aliases=("pvt_ffn", "conv_ffn"))
class WaveFFN(nn.Module):
    """Wave-ViT's feed-forward: Linear C -> hC, depthwise 3x3, GELU, Linear hC -> C (h = mlp_ratio).

    The Linears run as 1x1 convs (same weights, fast on channels_last).
    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: Context[int], mlp_ratio: float = 4.0, bias: bool = True):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"wave_ffn: int(dim * mlp_ratio) = int({dim} * {mlp_ratio}) leaves no "
                             "hidden channels")
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=True)
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x))))


@register("block", "wavelet_block", aliases=("wtb", "wave_block"))
class WaveletBlock(nn.Module):
    """Wavelet Transformer Block (Wave-ViT): x + WaveAttention(LN(x)); x + WaveFFN(LN(x)).

    LayerNorms are per-pixel over channels with bias (Wave-ViT: eps 1e-6).

    Args: dim, heads (context); sr: key/value stride of the attention (per
        level: Wave-ViT uses [4, 2, 1, 1] on a stride-4 stem; the ClusIR recipes,
        whose levels run at full, 1/2, 1/4, 1/8 resolution, use [8, 4, 2, 1]: a
        14 x 14 key grid at every level of a 224 input, which is what the paper's
        FLOPs term linear in d measures); mlp_ratio: FFN expansion (Wave-ViT:
        [8, 8, 4, 4]); wave: wavelet; bias: Linear biases.

    Shapes: (B, C, H, W) -> (B, C, H, W), any H x W.
    """

    def __init__(self, dim: Context[int], heads: Context[int] = 1, sr: int = 1,
                 mlp_ratio: float = 4.0, wave: str = "haar", bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, "with_bias", eps)
        self.attn = WaveAttention(dim, heads, sr=sr, wave=wave, bias=bias, eps=eps)
        self.norm2 = ChannelLayerNorm(dim, "with_bias", eps)
        self.ffn = WaveFFN(dim, mlp_ratio=mlp_ratio, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))

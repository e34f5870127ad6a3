"""Single-level 2-D DWT / IDWT module pair (Haar kernel; pytorch-wavelets for other wavelets)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.errors import check_feature
from irblocks.kernels.haar_dwt import haar_dwt, haar_idwt
from irblocks.registry import register

__all__ = ["DWT", "IDWT"]


def _pywt_modules(wave: str):
    from pytorch_wavelets import DWTForward, DWTInverse  # imported lazily (slow import)
    return DWTForward(J=1, wave=wave, mode="zero"), DWTInverse(wave=wave, mode="zero")


def _check_wave(wave: str, where: str) -> None:
    if wave == "haar":
        return
    import pywt
    if wave not in pywt.wavelist(kind="discrete"):
        raise ValueError(f"{where}: unknown discrete wavelet {wave!r} "
                         "(pywt.wavelist(kind='discrete') lists the valid names, e.g. 'haar', "
                         "'db2', 'sym4')")


@register("block", "dwt", aliases=("haar_dwt", "wavelet_dwt"))
class DWT(nn.Module):
    """One level of the 2-D discrete wavelet transform, subbands stacked on channels.

    ``wave="haar"`` runs the Haar butterfly kernel (``irblocks.kernels.haar_dwt``;
    Triton on CUDA, an elementwise PyTorch reference elsewhere). Any other
    pywt wavelet name runs ``pytorch_wavelets.DWTForward(J=1, mode="zero")``.
    Odd H or W: zero-padded at the bottom/right (what pytorch-wavelets'
    ``mode="zero"`` does); pass the original size to :class:`IDWT` to crop back.
    Filters stay float32 (no fp16 cast).

    Shapes: (B, C, H, W) -> (B, 4C, ceil(H/2), ceil(W/2)) for Haar, ordered
    ``[LL | LH | HL | HH]`` (channel s*C + c = subband s of channel c).
    """

    def __init__(self, wave: str = "haar"):
        super().__init__()
        _check_wave(wave, "dwt")
        self.wave = wave
        self._pywt = _pywt_modules(wave)[0] if wave != "haar" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature(x, None, "dwt input")
        if self._pywt is None:
            h, w = x.shape[-2:]
            if h % 2 or w % 2:
                x = F.pad(x, (0, w % 2, 0, h % 2))
            return haar_dwt(x)
        yl, yh = self._pywt(x.float())
        hi = yh[0]                                   # B, C, 3, h, w
        return torch.cat([yl, hi.transpose(1, 2).flatten(1, 2)], dim=1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}"


@register("block", "idwt", aliases=("haar_idwt", "wavelet_idwt"))
class IDWT(nn.Module):
    """Inverse of :class:`DWT`: (B, 4C, h, w) [LL | LH | HL | HH] -> (B, C, H, W).

    ``forward(y, size=None)``: ``size`` = the (H, W) given to the DWT; the result
    is cropped to it (default: 2h x 2w for Haar).
    """

    def __init__(self, wave: str = "haar"):
        super().__init__()
        _check_wave(wave, "idwt")
        self.wave = wave
        self._pywt = _pywt_modules(wave)[1] if wave != "haar" else None

    def forward(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        check_feature(y, None, "idwt input")
        if y.shape[1] % 4:
            raise ValueError("idwt: channels must be 4C (LL, LH, HL, HH stacked), got "
                             f"{y.shape[1]}")
        if self._pywt is None:
            x = haar_idwt(y)
        else:
            c = y.shape[1] // 4
            yl = y[:, :c].float()
            yh = y[:, c:].float().unflatten(1, (3, c)).transpose(1, 2)
            x = self._pywt((yl, [yh.contiguous()])).to(y.dtype)
        if size is not None:
            x = x[..., :size[0], :size[1]]
        return x

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}"

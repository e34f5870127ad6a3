"""Image reading: EXIF orientation (outputs upright), 16-bit TIFF at full precision."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from irblocks.train.imageio import image_size, orient, read_image
from irblocks.train.restore import restore_files


def _pattern(h=6, w=10):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_with_orientation(path, arr, o):
    im = Image.fromarray(arr)
    ex = Image.Exif()
    ex[0x0112] = o
    im.save(path, exif=ex)


@pytest.mark.parametrize("o", range(1, 9))
def test_orientation_matches_pillow(tmp_path, o):
    arr = _pattern()
    p = tmp_path / f"o{o}.png"
    _save_with_orientation(p, arr, o)
    with Image.open(p) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(orient(arr, o), want)
    got = read_image(p)
    assert torch.equal(got, torch.from_numpy(want.astype(np.float32) / 255).permute(2, 0, 1))
    assert image_size(p) == want.shape[:2]


class _Identity(nn.Module):
    def forward(self, x):
        return x


def test_rotated_phone_photo_restores_upright(tmp_path):
    upright = _pattern(8, 12)
    stored = np.rot90(upright, 1).copy()  # what a camera held sideways stores (orientation 6)
    src = tmp_path / "phone.png"
    _save_with_orientation(src, stored, 6)
    out = restore_files(
        _Identity(), [str(src)], str(tmp_path / "out.png"), tile=None, progress=False
    )
    with Image.open(out[0]) as im:
        assert im.getexif().get(0x0112, 1) == 1  # no tag left to turn it again
        assert np.array_equal(np.asarray(im.convert("RGB")), upright)


def test_16bit_rgb_tiff_full_precision(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    arr = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    arr[0, 0] = (1, 2, 65535)  # steps of 1/65535 must survive
    p = tmp_path / "deep.tif"
    tifffile.imwrite(p, arr, photometric="rgb")
    x = read_image(p)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    want = torch.from_numpy(arr.astype(np.float32) / 65535).permute(2, 0, 1)
    assert torch.equal(x, want)
    assert float(x[1, 0, 0]) != float(x[0, 0, 0])  # 8 bits would make 1 and 2 equal (0)
    # planar (separate) storage and a grey 16-bit TIFF
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(arr, -1, 0), photometric="rgb", planarconfig="separate"
    )
    assert torch.equal(read_image(tmp_path / "planar.tif"), want)
    tifffile.imwrite(tmp_path / "grey.tif", arr[..., 0])
    assert torch.equal(read_image(tmp_path / "grey.tif"), want[:1].expand(3, -1, -1))


def test_16bit_colour_png_warns_that_it_is_read_at_8_bits(tmp_path):
    import struct
    import zlib

    h, w = 3, 4
    a = (np.arange(h * w * 3).reshape(h, w, 3) * 1000 + 7).astype(">u2")
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, RGB
    p = tmp_path / "deep.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                  + chunk(b"IEND", b""))
    with pytest.warns(UserWarning, match=r"deep\.png: a 16-bit colour PNG is read at 8 bits"):
        x = read_image(p)
    assert x.shape == (3, h, w)
    torch.testing.assert_close(x,
                               torch.from_numpy((a >> 8).astype(np.float32) / 255).permute(2, 0, 1))

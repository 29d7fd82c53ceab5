"""Safe image reading: formats, bit depths, conversions, and every refusal path."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from defectmap.data.io import decode_image, image_size, probe_image, read_image, read_mask
from defectmap.errors import DefectmapError, ImageReadError, ImageTooLargeError


def _rgb(h: int = 20, w: int = 30) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 8 % 256, yy * 12 % 256, (xx + yy) * 5 % 256], axis=2).astype(np.uint8)


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _patch_png_size(path: Path, width: int, height: int) -> None:
    """Rewrite the IHDR width/height of a PNG (with a valid CRC), leaving the data alone."""
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_png_rgb_and_gray_roundtrip(tmp_path):
    rgb = _rgb()
    out = read_image(_save(rgb, tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)
    gray = rgb[:, :, 0]
    path = _save(gray, tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(path, mode="L"), gray)
    np.testing.assert_array_equal(read_image(path), np.repeat(gray[:, :, None], 3, axis=2))
    # colour -> "L" uses ITU-R 601-2 luma
    luma = read_image(tmp_path / "a.png", mode="L").astype(float)
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma - expected).max() <= 1.0


def test_16bit_gray_png_is_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 257 * 128], [65535, 65535 - 128, 1000]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path, mode="L")
    np.testing.assert_array_equal(out, [[0, 1, 128], [255, 255, 4]])


def test_16bit_rgb_tiff_falls_back_to_tifffile(tmp_path):
    values = (_rgb().astype(np.uint16) * 257)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    np.testing.assert_array_equal(read_image(path), _rgb())


def test_rgba_palette_bmp_tiff(tmp_path):
    rgb = _rgb()
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(_save(rgba, tmp_path / "a.png")), rgb)
    np.testing.assert_array_equal(read_image(_save(rgb, tmp_path / "a.bmp")), rgb)
    np.testing.assert_array_equal(read_image(_save(rgb, tmp_path / "a.tif")), rgb)

    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 255])
    np.testing.assert_array_equal(out[1, 1], [0, 255, 0])


def test_jpeg_reads_close_to_source(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 3, yy * 3, np.full_like(xx, 100)], axis=2).astype(np.uint8)
    out = read_image(_save(smooth, tmp_path / "a.jpg", quality=95))
    assert out.shape == (64, 64, 3)
    assert np.abs(out.astype(int) - smooth).mean() < 3.0


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = _save(noise, tmp_path / f"cut{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\{suffix}: cannot decode.*truncated"):
        read_image(path)


def test_not_an_image_missing_and_directory(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.png"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="absent.png: file not found"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)
    assert issubclass(ImageReadError, DefectmapError)


def test_pixel_limit_is_checked_on_the_header(tmp_path):
    path = _save(np.zeros((10, 10), np.uint8), tmp_path / "bomb.png")
    _patch_png_size(path, 9000, 9000)  # 81 Mpx claimed, ~100 bytes on disk
    # The header is read without decoding: the size is reported as claimed.
    assert image_size(path, max_pixels=10**9) == (9000, 9000)
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused.*81000000 pixels"):
        read_image(path)  # default limit 64 Mpx
    with pytest.raises(ImageReadError, match="refused"):
        read_image(_save(np.zeros((20, 20), np.uint8), tmp_path / "s.png"), max_pixels=399)


def test_pillow_decompression_bomb_error_becomes_image_read_error(tmp_path):
    path = _save(np.zeros((10, 10), np.uint8), tmp_path / "huge.png")
    _patch_png_size(path, 100_000, 100_000)  # beyond Pillow's own hard limit
    with pytest.raises(ImageReadError) as caught:
        read_image(path)  # Pillow refuses before our check: the message quotes our limit
    assert str(caught.value) == (
        f"{path}: refused, image too large: it has 10000000000 pixels, more than the limit "
        "of 64000000 (possible decompression bomb)")
    with pytest.raises(ImageReadError, match=r"huge\.png: refused.* Pillow's hard limit of"):
        read_image(path, max_pixels=10**12)  # our limit would allow it: Pillow refuses


def test_decode_image_limits(tmp_path):
    rgb = _rgb()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    data = buf.getvalue()
    np.testing.assert_array_equal(decode_image(data, "up.png"), rgb)
    assert decode_image(data, "up.png", mode="L").shape == (20, 30)
    with pytest.raises(ImageReadError, match=r"up\.png: refused.*bytes"):
        decode_image(data, "up.png", max_bytes=len(data) - 1)
    with pytest.raises(ImageReadError, match="up.png: empty"):
        decode_image(b"", "up.png")
    with pytest.raises(ImageReadError, match="junk.bin"):
        decode_image(b"\x89PNG not really", "junk.bin")
    with pytest.raises(ImageReadError, match="refused"):
        decode_image(data, "up.png", max_pixels=599)
    with pytest.raises(ImageReadError, match="up.png"):
        decode_image(data[: len(data) // 2], "up.png")


def test_probe_image_reads_only_the_header_of_an_upload(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="JPEG")
    assert probe_image(buf.getvalue(), "up.jpg") == (30, 20, "RGB", "JPEG")
    bomb = _save(np.zeros((10, 10), np.uint8), tmp_path / "bomb.png")
    _patch_png_size(bomb, 9000, 9000)
    # Too many pixels is its own error class (the service answers 413, not 415).
    with pytest.raises(ImageTooLargeError, match=r"b\.png: refused.*81000000 pixels"):
        probe_image(bomb.read_bytes(), "b.png")
    with pytest.raises(ImageReadError, match="t.txt: not a readable image") as info:
        probe_image(b"plain text", "t.txt")
    assert not isinstance(info.value, ImageTooLargeError)


def test_read_mask_gray_and_colour(tmp_path):
    values = np.array([[0, 255, 0], [1, 0, 0]], np.uint8)
    mask = read_mask(_save(values, tmp_path / "m.png"))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, values > 0)
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[1, 2, 1] = 200
    np.testing.assert_array_equal(read_mask(_save(colour, tmp_path / "c.png")),
                                  [[0, 0, 0], [0, 0, 1]])


def test_16bit_and_float_masks_keep_small_nonzero_labels(tmp_path):
    from defectmap.data.io import read_mask_values

    label = np.zeros((4, 5), np.uint16)
    label[1, 2] = 1  # a 0/1 label mask stored in 16 bit: 1 / 257 rounds to 0 as an image
    label[2, 3] = 65535
    path = _save(label, tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(path), label > 0)
    np.testing.assert_array_equal(read_mask_values(path), [[0] * 5, [0, 0, 1, 0, 0],
                                                           [0, 0, 0, 255, 0], [0] * 5])
    soft = np.zeros((4, 5), np.float32)
    soft[0, 0] = 1e-3
    tifffile.imwrite(tmp_path / "f.tif", soft)
    np.testing.assert_array_equal(read_mask(tmp_path / "f.tif"), soft > 0)
    # Images are unchanged: the same 16-bit value still reads as 0.
    assert read_image(path, mode="L")[1, 2] == 0

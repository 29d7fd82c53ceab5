"""Safe image reading, in one place.

Every image and mask that enters defectmap goes through this module. It reads 8- and 16-bit,
grayscale / RGB / RGBA / palette PNG, JPEG, BMP and TIFF, refuses images with more pixels
than a limit *before* decoding them (decompression bombs), refuses truncated files, and
turns every failure into an :class:`~defectmap.errors.ImageReadError` whose message names
the file and the problem.

Conversions
-----------
* 16-bit data is scaled to 8 bits (``value / 257``, rounded), so ``65535 -> 255``.
* Palette images are expanded through their palette; the alpha channel of RGBA / LA /
  transparent-palette images is dropped (the colour values are kept as they are).
* ``mode="L"`` converts colour to luma with ITU-R 601-2 weights (Pillow's ``convert("L")``).
* EXIF orientation is *not* applied: masks are paired to images pixel by pixel, so the
  stored pixel grid is what counts.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from defectmap.constants import MAX_IMAGE_PIXELS
from defectmap.errors import ImageReadError, ImageTooLargeError
from defectmap.progress import ProgressCallback, track

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "MAX_UPLOAD_BYTES",
    "ImageInfo",
    "as_image_array",
    "check_image",
    "check_images",
    "decode_image",
    "image_header",
    "image_size",
    "iter_batches",
    "probe_image",
    "probe_info",
    "read_image",
    "read_mask",
    "read_mask_values",
    "verify_image",
]

#: File name suffixes (lower case) that are treated as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
)
#: Default byte limit of :func:`decode_image` (uploads).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024

Mode = Literal["RGB", "L"]
_Source = str | Path | IO[bytes]

# Truncated files must fail, never be padded with grey silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_READ_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    MemoryError,
    KeyError,
    IndexError,
    TypeError,
)


def _open(source: _Source, name: str, max_pixels: int) -> Image.Image:
    """Open ``source`` (header only) and refuse it when it has more than ``max_pixels``.

    Raises :class:`ImageTooLargeError` over the limit, :class:`ImageReadError` otherwise.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (~89 Mpx); the pixel check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{name}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(f"{name}: is a directory, not an image") from exc
    except Image.DecompressionBombError as exc:
        # Pillow refuses before our own check can run (over twice its MAX_IMAGE_PIXELS).
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(claimed.group(1))} pixels" if claimed else "more pixels"
        hard = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = (f"the limit of {max_pixels}" if max_pixels < hard
                 else f"Pillow's hard limit of {hard}")
        raise ImageTooLargeError(
            f"{name}: refused, image too large: it has {pixels}, more than {limit} "
            "(possible decompression bomb)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            f"{name}: not a readable image (unknown format; expected PNG, JPEG, BMP or TIFF)"
        ) from exc
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{name}: not a readable image ({exc})") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageReadError(f"{name}: invalid image size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise ImageTooLargeError(
            f"{name}: refused, image has {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels} (possible decompression bomb)"
        )
    return im


def _scale_to_uint8(arr: np.ndarray, keep_nonzero: bool = False) -> np.ndarray:
    """Scale integer or float pixel data to uint8 (16-bit by ``/257``; floats in [0, 1]).

    With ``keep_nonzero`` (masks), a nonzero value that would round to 0 becomes 1, so a
    16-bit 0/1 label mask keeps its defect pixels.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if finite.size and finite.max() <= 1.0:
            finite = finite * 255.0
        out = np.clip(np.rint(finite), 0, 255).astype(np.uint8)
    else:
        # 16-bit (and 32-bit "I" images that hold 16-bit PNG data).
        wide = np.clip(arr.astype(np.int64), 0, 65535)
        out = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    if keep_nonzero:
        out[(out == 0) & (arr != 0)] = 1
    return out


def _decode(im: Image.Image, name: str, mode: Mode, keep_nonzero: bool = False) -> np.ndarray:
    """Decode an opened image fully and convert it to ``mode`` as uint8.

    ``keep_nonzero``: see :func:`_scale_to_uint8` (16-bit and float images only).
    """
    try:
        im.load()
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            gray = _scale_to_uint8(np.asarray(im), keep_nonzero)
            if gray.ndim != 2:
                raise ImageReadError(f"{name}: unsupported pixel layout {gray.shape}")
            return gray if mode == "L" else np.repeat(gray[:, :, None], 3, axis=2)
        if im.mode == "P":
            has_alpha = "transparency" in im.info
            im = im.convert("RGBA" if has_alpha else "RGB")
        if im.mode != mode:
            im = im.convert(mode)
        return np.array(im, dtype=np.uint8, copy=True)
    except ImageReadError:
        raise
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{name}: cannot decode image, truncated or corrupt ({exc})") from exc
    finally:
        im.close()


def _read_tiff_fallback(path: Path, mode: Mode, max_pixels: int) -> np.ndarray:
    """Read TIFF layouts Pillow does not support (16-bit RGB, float RGB) with tifffile."""
    import tifffile

    name = str(path)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = page.shape  # type: ignore[union-attr]
            if int(np.prod(shape[:2])) > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: refused, image has {shape[1]}x{shape[0]} pixels, more than the "
                    f"limit of {max_pixels} (possible decompression bomb)"
                )
            arr = page.asarray()  # type: ignore[union-attr]
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types; all mean "cannot read"
        raise ImageReadError(f"{name}: cannot decode TIFF image ({exc})") from exc
    arr = _scale_to_uint8(np.asarray(arr))
    if arr.ndim == 3 and arr.shape[2] >= 3:
        rgb = arr[:, :, :3]
        if mode == "RGB":
            return np.ascontiguousarray(rgb)
        return np.array(Image.fromarray(np.ascontiguousarray(rgb)).convert("L"))
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ImageReadError(f"{name}: unsupported TIFF layout with shape {arr.shape}")
    return arr if mode == "L" else np.repeat(arr[:, :, None], 3, axis=2)


def read_image(
    path: str | Path, mode: Mode = "RGB", max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read an image file as uint8 pixels.

    Parameters
    ----------
    path : image file (PNG, JPEG, BMP or TIFF; 8 or 16 bit; gray, RGB, RGBA or palette).
    mode : ``"RGB"`` for an (H, W, 3) array or ``"L"`` for an (H, W) gray array.
    max_pixels : images with more than ``width * height`` pixels are refused before decoding.

    Returns
    -------
    np.ndarray
        uint8 array of shape (H, W, 3) for ``"RGB"`` or (H, W) for ``"L"``.

    Raises
    ------
    ImageReadError
        The file is missing, not an image, truncated, corrupt or too large; the message
        names the file.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    path = Path(path)
    im = _open(path, str(path), max_pixels)
    if im.format == "TIFF" and im.mode not in ("1", "L", "P", "RGB", "RGBA", "LA", "I;16",
                                               "I;16B", "I;16L", "I", "F", "CMYK"):
        im.close()
        return _read_tiff_fallback(path, mode, max_pixels)
    try:
        return _decode(im, str(path), mode)
    except ImageReadError:
        if path.suffix.lower() in (".tif", ".tiff"):
            # Pillow may open a TIFF it cannot decode (e.g. multi-channel 16 bit).
            return _read_tiff_fallback(path, mode, max_pixels)
        raise


def decode_image(
    data: bytes,
    name: str,
    mode: Mode = "RGB",
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> np.ndarray:
    """Decode an image held in memory (an upload) like :func:`read_image`.

    Parameters
    ----------
    data : the encoded file's bytes.
    name : a name for error messages (the upload's file name).
    mode : ``"RGB"`` for (H, W, 3) or ``"L"`` for (H, W).
    max_pixels : pixel-count limit, checked on the header before decoding.
    max_bytes : byte limit, checked before anything is parsed.

    Returns
    -------
    np.ndarray
        uint8 array of shape (H, W, 3) or (H, W).

    Raises
    ------
    ImageReadError
        Empty, too many bytes, not an image, truncated, or too many pixels.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if not data:
        raise ImageReadError(f"{name}: empty upload, no image data")
    if len(data) > max_bytes:
        raise ImageTooLargeError(
            f"{name}: refused, upload has {len(data)} bytes, more than the limit of {max_bytes}"
        )
    im = _open(io.BytesIO(data), name, max_pixels)
    return _decode(im, name, mode)


def probe_image(
    data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int, str, str]:
    """Read only the header of an image held in memory (an upload); decode nothing.

    Returns
    -------
    tuple
        ``(width, height, pillow_mode, format)``, format as Pillow names it (``"PNG"``...).

    Raises
    ------
    ImageTooLargeError
        Over ``max_pixels`` (a possible decompression bomb).
    ImageReadError
        Not an image of a known format, or an unreadable header.
    """
    info, fmt = probe_info(data, name, max_pixels)
    return info.width, info.height, info.mode, fmt


def probe_info(
    data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[ImageInfo, str]:
    """Like :func:`probe_image`: the upload's :class:`ImageInfo` and its format name."""
    im = _open(io.BytesIO(data), name, max_pixels)
    try:
        return ImageInfo(im.size[0], im.size[1], im.mode, _is_grayscale(im)), str(im.format)
    except _READ_ERRORS as exc:
        raise ImageReadError(f"{name}: cannot read the image header ({exc})") from exc
    finally:
        im.close()


def image_size(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Return ``(width, height)`` of an image from its header, without decoding pixels.

    Raises
    ------
    ImageReadError
        The file is missing, not an image, or over ``max_pixels``.
    """
    width, height, _mode = image_header(path, max_pixels)
    return width, height


def image_header(
    path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int, str]:
    """Return ``(width, height, pillow_mode)`` from an image's header (no pixel decoding).

    ``pillow_mode`` is Pillow's mode string, e.g. ``"RGB"``, ``"L"``, ``"P"``, ``"I;16"``.
    """
    path = Path(path)
    im = _open(path, str(path), max_pixels)
    try:
        return im.size[0], im.size[1], im.mode
    finally:
        im.close()


@dataclass(frozen=True)
class ImageInfo:
    """What an image file's header and integrity check tell: size, mode, colour.

    Attributes
    ----------
    width, height : size in pixels.
    mode : Pillow's mode string (``"RGB"``, ``"L"``, ``"P"``, ``"I;16"``, ...).
    grayscale : True for one-channel modes (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) and
        for palette images whose palette holds only grays; False for colour.
    """

    width: int
    height: int
    mode: str
    grayscale: bool


_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _is_grayscale(im: Image.Image) -> bool:
    """Whether an opened image holds gray values only, judged from its header and palette."""
    if im.mode in _GRAY_MODES:
        return True
    if im.mode in ("P", "PA") and im.palette is not None:
        # The palette as read from the header: im.getpalette() would decode the pixels.
        layout = getattr(im.palette, "rawmode", None) or im.palette.mode
        data = np.frombuffer(bytes(im.palette.palette), dtype=np.uint8)
        step = len(layout) if layout in ("RGB", "RGBA", "RGBX", "BGR", "BGRX", "BGRA") else 3
        entries = data[: data.size // step * step].reshape(-1, step)[:, :3]
        return bool(entries.size) and bool((entries == entries[:, :1]).all())
    return False


def check_image(
    path: str | Path, full: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> ImageInfo:
    """Check that an image file is complete and return its :class:`ImageInfo`.

    PNG files are verified chunk by chunk against their CRC-32 checksums up to the closing
    ``IEND`` chunk, which finds truncated and corrupted files about 100 times faster than
    decoding (no decompression). Other formats, and PNG when ``full`` is True, are decoded
    completely.

    Raises
    ------
    ImageReadError
        Missing, not an image, truncated, corrupt, or over ``max_pixels``; names the file.
    """
    path = Path(path)
    im = _open(path, str(path), max_pixels)
    size, mode = im.size, im.mode
    try:
        grayscale = _is_grayscale(im)
    except _READ_ERRORS as exc:
        im.close()
        raise ImageReadError(f"{path}: cannot read the palette ({exc})") from exc
    if im.format == "PNG" and not full:
        try:
            im.verify()
        except _READ_ERRORS as exc:
            raise ImageReadError(
                f"{path}: truncated or corrupt PNG file ({exc or type(exc).__name__})"
            ) from exc
        finally:
            im.close()
    else:
        _decode(im, str(path), "L" if mode in ("1", "L", "I;16", "I") else "RGB")
    return ImageInfo(size[0], size[1], mode, grayscale)


def verify_image(
    path: str | Path, full: bool = False, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[int, int, str]:
    """:func:`check_image` as a ``(width, height, pillow_mode)`` tuple."""
    info = check_image(path, full, max_pixels)
    return info.width, info.height, info.mode


def check_images(
    paths: Sequence[str | Path],
    max_pixels: int = MAX_IMAGE_PIXELS,
    progress: ProgressCallback | None = None,
    task: str = "checking images",
) -> list[ImageInfo]:
    """Check every image file (see :func:`check_image`) before any long work reads them.

    All files are checked, so that one error names every bad file, not only the first.

    Returns
    -------
    list of ImageInfo
        One per path, in order.

    Raises
    ------
    ImageReadError
        One or more files cannot be read; the message lists each with its problem.
    """
    infos: list[ImageInfo] = []
    bad: list[str] = []
    for path in track(paths, task, progress):
        try:
            infos.append(check_image(path, max_pixels=max_pixels))
        except ImageReadError as exc:
            bad.append(str(exc))
    if bad:
        raise ImageReadError(
            f"{len(bad)} of {len(paths)} image(s) cannot be read: " + "; ".join(bad)
        )
    return infos


def read_mask_values(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a mask's raw values as a uint8 (H, W) array (colour masks: channel maximum).

    16-bit and float masks are scaled like images, except that a nonzero value never
    becomes 0 (a 16-bit 0/1 label mask reads as 0/1). Used by integrity checks that must
    see whether a mask is binary; most code wants :func:`read_mask`.
    """
    path = Path(path)
    im = _open(path, str(path), max_pixels)
    if im.mode in ("L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _decode(im, str(path), "L", keep_nonzero=True)
    rgb = _decode(im, str(path), "RGB")
    return np.asarray(rgb.max(axis=2), dtype=np.uint8)


def read_mask(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read a ground-truth mask as a boolean (H, W) array; nonzero pixels are defect.

    Raises
    ------
    ImageReadError
        As :func:`read_image`.
    """
    return read_mask_values(path, max_pixels) > 0


ImageInput = np.ndarray | str | PathLike


def as_image_array(image: ImageInput, index: int = 0) -> np.ndarray:
    """Return an image as a uint8 array (H, W) or (H, W, 3); paths are read safely.

    Parameters
    ----------
    image : a uint8 array (H, W), (H, W, 1) or (H, W, 3), or a path to an image file.
    index : position of the image in its sequence (used in error messages).

    Raises
    ------
    ImageReadError : the file cannot be read or the array has the wrong dtype/shape.
    """
    if not isinstance(image, np.ndarray):
        return read_image(Path(image), mode="RGB")
    if image.dtype != np.uint8:
        raise ImageReadError(f"image #{index}: expected dtype uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ImageReadError(
            f"image #{index}: expected shape (H, W) or (H, W, 3), got {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageReadError(f"image #{index}: empty image of shape {image.shape}")
    return image


def iter_batches(
    images: Sequence[ImageInput],
    batch_size: int,
    description: str,
    progress: ProgressCallback | None = None,
) -> Iterator[list[np.ndarray]]:
    """Yield lists of at most ``batch_size`` uint8 arrays; files are read lazily.

    The one batching helper of every scorer (detectors and exported runtimes). ``progress`` gets
    ``(description, images done, len(images))`` after each batch (see
    :mod:`defectmap.progress`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    if progress is not None:
        progress(description, 0, n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield [as_image_array(images[i], i) for i in range(start, stop)]
        if progress is not None:
            progress(description, stop, n)

"""The images ``predict`` reads: PNG/JPEG files, folders of them, npz arrays. Every input is checked from its
header before the model runs (a bad path or a non-image fails at once), and read as uint8 (C, H, W) of the
model's channels and size the way the README's "Predict" section describes, one batch in memory at a time.
"""

from __future__ import annotations

import os
import stat
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmnist_pipeline.errors import PipelineError, first_line
from medmnist_pipeline.memory import trim_heap

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")
NPZ_KEY = "test_images"  # the MedMNIST layout's split to predict; a plain npz must hold exactly one array
# pixels per image (width x height) read from the header before decoding; `predict --max-pixels` raises it. A 16 MP
# colour image decodes to 48 MB; Pillow's own warning comes only at 89 MP, and its refusal at 179 MP.
DEFAULT_MAX_PIXELS = 16_000_000
# what Pillow raises for an image whose metadata chunks (zTXt, iCCP, ...) inflate past its limits, or that is cut short
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error)


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: a file, or one entry of an npz array. ``size`` is (width, height)."""

    name: str  # the CSV's file column: the path as given, or ``path.npz[index]``
    path: Path
    size: tuple[int, int]
    channels: int  # 1 (grey, including 16-bit) or 3 (colour: RGB, RGBA, palette, CMYK, ...)
    key: str | None = None  # npz: the array's key
    index: int | None = None  # npz: the image's position in that array
    channels_first: bool = False  # npz stored as (N, C, H, W)


def collect(inputs: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ImageInput]:
    """Every image named by ``inputs`` (files, folders of PNG/JPEG files, npz files), checked from headers only:
    regular files only (a FIFO or a device would block or never end), at most ``max_pixels`` pixels per image."""
    sources: list[ImageInput] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise PipelineError(f"{given}: no PNG or JPEG files in this folder (names ending .png, .jpg, .jpeg)")
            sources.extend(_image_source(p, str(p), max_pixels) for p in files)
        elif not path.exists():
            raise PipelineError(f"{given}: no such file or folder")
        elif not stat.S_ISREG(os.stat(path).st_mode):
            raise PipelineError(f"{given}: not a regular file (a FIFO, socket or device); it was not opened")
        elif path.suffix.lower() == ".npz":
            sources.extend(_npz_sources(path, given, max_pixels))
        else:
            sources.append(_image_source(path, given, max_pixels))
    return sources


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise PipelineError(
            f"{name}: {width}x{height} px ({width * height / 1e6:.1f} MP) is over the {max_pixels / 1e6:g} MP "
            "limit on an image; it was not decoded (shrink it, or raise --max-pixels)"
        )


GREY_MODES = ("1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N")


def _image_source(path: Path, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInput:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel budget below decides
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                size, mode = image.size, image.mode
    except UnidentifiedImageError:
        raise PipelineError(f"{name}: not a PNG or JPEG image") from None
    except Image.DecompressionBombError as exc:
        raise PipelineError(f"{name}: {first_line(exc)} (raise --max-pixels to allow more)") from None
    except OSError as exc:
        raise PipelineError(f"{name}: cannot read this file ({exc.strerror or first_line(exc)})") from None
    except DECODE_ERRORS as exc:  # e.g. a zTXt or iCCP chunk that inflates past Pillow's limit
        raise PipelineError(f"{name}: cannot read this image ({first_line(exc)})") from None
    _check_pixels(name, *size, max_pixels)
    if mode in ("I", "F"):
        raise PipelineError(
            f"{name}: {mode} images (32-bit {'integer' if mode == 'I' else 'float'} pixels) are "
            "not supported; save it as an 8- or 16-bit PNG or a JPEG"
        )
    return ImageInput(name, path, size, 1 if mode in GREY_MODES else 3)


def _npz_sources(path: Path, given: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ImageInput]:
    """The ``test_images`` array of a MedMNIST-layout npz, else the only array of a plain npz: uint8 (N, H, W),
    (N, H, W, 1|3) or (N, 1|3, H, W)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zip errors, pickled data, unreadable file: all mean "not an npz"
        raise PipelineError(f"{given}: not a readable npz file ({first_line(exc)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load gave back an array: a .npy file named .npz
        raise PipelineError(f"{given}: an .npy array, not an npz archive (np.savez writes npz)")
    with loaded:
        keys = list(loaded.files)
    if NPZ_KEY in keys:
        key = NPZ_KEY
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise PipelineError(
            f"{given}: expected a '{NPZ_KEY}' array (MedMNIST layout) or exactly one array; found "
            f"{', '.join(keys) or 'no arrays'}"
        )
    shape, dtype = _npz_array_header(path, key)
    where = f"{given}[{key}]"
    if dtype != np.uint8:
        raise PipelineError(f"{where}: dtype {dtype}; expected uint8 pixel values 0-255")
    channels_first = len(shape) == 4 and shape[3] not in (1, 3) and shape[1] in (1, 3)
    if len(shape) == 3:
        n, height, width, channels = *shape, 1
    elif len(shape) == 4 and (shape[3] in (1, 3) or channels_first):
        n, height, width, channels = (shape[0], shape[2], shape[3], shape[1]) if channels_first else shape
    else:
        raise PipelineError(f"{where}: shape {shape}; expected images (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W)")
    if n == 0 or height == 0 or width == 0:
        raise PipelineError(f"{where}: shape {shape} holds no images")
    _check_pixels(where, width, height, max_pixels)
    return [ImageInput(f"{given}[{i}]", path, (width, height), channels, key, i, channels_first) for i in range(n)]


# deflate cannot shrink data by more than about 1032:1: a member claiming more than that is lying
MAX_DEFLATE_RATIO = 1032


def _npz_array_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one npz member from its .npy header, without decompressing the data.

    The header's claim is checked against what the file can hold (the member's size, and the archive's own size
    times deflate's best ratio), so a lying header is refused before anything is allocated for it.
    """
    from medmnist_pipeline.data.dataset import npy_header

    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
            shape, _, dtype = npy_header(f)
            _check_claim(path, key, shape, dtype, archive.getinfo(f"{key}.npy"), data_offset=f.tell())
            return shape, dtype
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    with np.load(path, allow_pickle=False) as npz:  # other header versions: read the array itself
        try:
            array = npz[key]
        except ValueError as exc:  # an object array (pickled), or fewer bytes than its header claims
            raise PipelineError(f"{path}[{key}]: not an array of pixel values ({first_line(exc)})") from None
        return array.shape, array.dtype


def _check_claim(
    path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, info: zipfile.ZipInfo, data_offset: int
) -> None:
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    stored = info.file_size - data_offset  # what the member says it holds after its .npy header
    possible = min(stored, info.compress_size * MAX_DEFLATE_RATIO, path.stat().st_size * MAX_DEFLATE_RATIO)
    if claimed > possible:
        raise PipelineError(
            f"{path}[{key}]: its header claims shape {shape} ({claimed:,} bytes), but the file holds at most "
            f"{max(possible, 0):,} bytes of it; the file is damaged or not what it says"
        )


def _open_member(path: Path, key: str) -> Any:
    """One npz member, indexable by image: memory-mapped when stored uncompressed (np.savez), streamed forward in
    chunks when compressed (np.savez_compressed); either way a large array is never held whole in memory. Only a
    Fortran-ordered member (not written by MedMNIST or np.savez of C arrays) is decompressed whole."""
    from medmnist_pipeline.data.dataset import npy_header

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        with archive.open(info) as f:
            shape, fortran_order, dtype = npy_header(f)
    if fortran_order or dtype.hasobject:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    if info.compress_type != zipfile.ZIP_STORED:
        return StreamedMember(path, f"{key}.npy", shape, dtype)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the local file header: its name and extra field lengths are at bytes 26-29
        name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_length + extra_length)
        npy_header(f)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=f.tell())


# what a compressed npz member holds in memory at a time (images are read in order, so a chunk serves many batches)
STREAM_CHUNK_BYTES = 16 << 20


class StreamedMember:
    """A compressed npz member read forward a chunk of images at a time (deflate cannot seek): ``predict`` asks for
    images in ascending order, so memory holds one chunk, not the array; asking for an earlier image restarts the
    stream from the beginning."""

    def __init__(self, path: Path, member: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.member, self.shape, self.dtype = path, member, shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self.rows_per_chunk = max(1, STREAM_CHUNK_BYTES // max(self.row_bytes, 1))
        self._archive: zipfile.ZipFile | None = None
        self._stream: Any = None
        self._start, self._next = 0, 0  # the chunk's first image, the stream's next image
        self._chunk = np.empty((0, *shape[1:]), dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def _restart(self) -> None:
        from medmnist_pipeline.data.dataset import npy_header

        self.close()
        self._archive = zipfile.ZipFile(self.path)
        self._stream = self._archive.open(self.member)
        npy_header(self._stream)
        self._start, self._next = 0, 0
        self._chunk = self._chunk[:0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self.shape[0]:
            raise IndexError(index)
        if self._stream is None or index < self._start:
            self._restart()
        while index >= self._start + len(self._chunk):
            n = min(self.rows_per_chunk, self.shape[0] - self._next)
            data = self._stream.read(n * self.row_bytes)
            if len(data) != n * self.row_bytes:
                raise EOFError(f"the array ends after {self._next + len(data) // self.row_bytes} images")
            self._chunk = np.frombuffer(data, self.dtype).reshape(n, *self.shape[1:])
            self._start, self._next = self._next, self._next + n
            trim_heap()  # the previous chunk's pages go back to the OS: memory holds one chunk
        return self._chunk[index - self._start]

    def close(self) -> None:
        if self._archive is not None:
            self._stream.close()
            self._archive.close()
        self._archive = self._stream = None


class Pixels:
    """Reads sources as uint8 (C, H, W) arrays of the model's size and channels; keeps one npz array open."""

    def __init__(self, in_channels: int, size: int) -> None:
        self.in_channels, self.size = in_channels, size
        self._npz: tuple[Path, str, Any] | None = None

    def __call__(self, source: ImageInput) -> np.ndarray:
        from PIL import Image

        if source.key is None:
            image = self._open(source)
        else:
            array = self._row(source)
            array = np.moveaxis(array, 0, -1) if source.channels_first else array
            array = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
            if array.shape[:2] == (self.size, self.size) and (array.ndim == 2) == (self.in_channels == 1):
                return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # already the model's input
            image = Image.fromarray(array, "L" if array.ndim == 2 else "RGB")
        target = "L" if self.in_channels == 1 else "RGB"
        if image.mode != target:
            image = image.convert(target)  # colour -> luma (ITU-R 601-2); grey -> 3 equal channels; alpha dropped
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(image)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def _open(self, source: ImageInput) -> Any:
        from PIL import Image, ImageOps

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # within --max-pixels by now
                with Image.open(source.path, formats=IMAGE_FORMATS) as image:
                    image = ImageOps.exif_transpose(image)  # camera JPEGs: upright as viewers show them
                    image.load()
        except (*DECODE_ERRORS, Image.DecompressionBombError) as exc:  # e.g. truncated, or a chunk too large
            raise PipelineError(f"{source.name}: cannot decode this image ({first_line(exc)})") from None
        if image.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits' worth of contrast, not a clip at 255
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8), "L")
        return image

    def _row(self, source: ImageInput) -> np.ndarray:
        try:  # a compressed member is decompressed here, as the images are reached
            if self._npz is None or self._npz[:2] != (source.path, source.key):
                self._npz = (source.path, source.key, _open_member(source.path, source.key))
            return np.asarray(self._npz[2][source.index])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # damaged after its header
            raise PipelineError(f"{source.path}[{source.key}]: cannot read this array ({first_line(exc)})") from None

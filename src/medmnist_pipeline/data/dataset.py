"""MedMNIST data: fetch the official file (present, mirror or download; always MD5-verified), check it, and
store each split as plain ``.npy`` arrays that later stages memory-map and index a batch at a time.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from medmnist_pipeline.config.params import DataParams
from medmnist_pipeline.data.layout import nchw_view
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import atomic_file, md5sum
from medmnist_pipeline.metadata import DATASETS, MULTI_LABEL, SPLITS

MIRROR_ENV = "MEDMNIST_MIRROR"
CUSTOM_SOURCE = "custom-source.json"  # data/raw's content for custom data: the file's path and MD5
ARRAY_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


@dataclass(frozen=True)
class DatasetMeta:
    """What a prepared dataset is; written to ``meta.json`` beside the arrays and read by every later stage."""

    flag: str
    size: int
    task: str
    labels: list[str]
    n_channels: int
    n_samples: dict[str, int]
    md5: str
    file: str

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL


# --- fetching -----------------------------------------------------------------------------------------------


def fetch(params: DataParams, raw_dir: Path, log=print) -> tuple[Path, str]:
    """Return (path, md5) of the verified source file, copying or downloading it into ``raw_dir`` if needed."""
    if params.flag == "custom":
        path = Path(params.custom.path)
        if not path.is_file():
            raise PipelineError(f"data.custom.path: {path} does not exist")
        md5 = md5sum(path)
        # dvc.yaml declares data/raw as the download stage's output whatever the data: say where the file is.
        with atomic_file(raw_dir / CUSTOM_SOURCE) as tmp:
            tmp.write_text(json.dumps({"path": str(path), "md5": md5}, indent=2) + "\n")
        return path, md5

    info = DATASETS[params.flag]
    name, expected = info.file_name(params.size), info.md5[params.size]
    target = raw_dir / name
    if target.is_file():
        actual = md5sum(target)
        if actual == expected:
            log(f"{target}: present, MD5 {actual} matches")
            return target, actual
        log(f"{target}: MD5 {actual} does not match the official {expected}; fetching a fresh copy")

    mirror = os.environ.get(MIRROR_ENV) or params.mirror
    if mirror and (Path(mirror) / name).is_file():
        log(f"copying {name} from mirror {mirror}")
        source = Path(mirror) / name
        try:
            with atomic_file(target) as tmp:
                shutil.copyfile(source, tmp)
                _check_md5(tmp, expected, source=str(source))
        except PermissionError as exc:
            denied = source if exc.filename == str(source) else target
            raise PipelineError(f"{denied}: permission denied; make it readable, or unset the mirror") from None
        except OSError as exc:
            raise PipelineError(f"cannot copy {source} to {target}: {exc.strerror or exc}") from None
        return target, expected
    if mirror:
        log(f"mirror {mirror} has no {name}; downloading it")

    limit = Limits(
        max_bytes=info.max_file_bytes(params.size),
        min_rate=MIN_RATE_BYTES_PER_S,
        grace_s=params.download.timeout_s,
    )
    download(
        info.url(params.size),
        target,
        expected,
        params.download.timeout_s,
        params.download.retries,
        params.download.backoff_s,
        limit=limit,
        log=log,
    )
    return target, expected


# A download slower than this on average (after its first ``timeout_s``) is abandoned: at this rate the largest
# official file (pathmnist 224 px) would still arrive within a working day; a trickling server never ends.
MIN_RATE_BYTES_PER_S = 32 << 10


@dataclass(frozen=True)
class Limits:
    """Bounds on one download attempt: its size, and its average rate once ``grace_s`` have passed (so the
    attempt's overall deadline is ``grace_s + max_bytes / min_rate``)."""

    max_bytes: int
    min_rate: float
    grace_s: float

    @property
    def deadline_s(self) -> float:
        return self.grace_s + self.max_bytes / self.min_rate


def download(
    url: str,
    target: Path,
    md5: str,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    limit: Limits,
    log=print,
) -> None:
    """Download ``url`` to ``target`` through a temporary file that is renamed only once its MD5 matches."""
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff_s * 2 ** (attempt - 1)
            log(f"retry {attempt}/{retries} in {wait:.3g} s ({last_error})")
            time.sleep(wait)
        try:
            with atomic_file(target) as tmp:
                _stream(url, tmp, timeout_s, limit, label=target.name)
                _check_md5(tmp, md5, source=url)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:  # 404 and friends will not change by asking again
                raise PipelineError(f"{url}: HTTP {exc.code} {exc.reason}.\n{_offline_help(target, md5)}") from None
            last_error = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last_error = exc
    raise PipelineError(
        f"could not download {url} ({retries + 1} attempts; last error: {last_error}).\n{_offline_help(target, md5)}"
    )


def _stream(url: str, path: Path, timeout_s: float, limit: Limits, label: str) -> None:
    from tqdm import tqdm

    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as f:  # noqa: S310
        total = int(response.headers.get("Content-Length") or 0) or None
        if total is not None and total > limit.max_bytes:  # not retried: the same server will announce the same
            raise PipelineError(
                f"{url}: announces {total} bytes, more than the official file can be ({limit.max_bytes})"
            )
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar:
            # read1: whatever has arrived, so that a trickling server is seen between bytes, not after 1 MiB
            while chunk := response.read1(1 << 20):
                received += len(chunk)
                if received > limit.max_bytes:
                    raise PipelineError(
                        f"{url}: sent more than {limit.max_bytes} bytes, more than the official file can be; discarded"
                    )
                f.write(chunk)
                bar.update(len(chunk))
                elapsed = time.monotonic() - started
                if elapsed > limit.grace_s and received / elapsed < limit.min_rate:
                    raise TimeoutError(
                        f"too slow: {received} bytes in {elapsed:.0f} s, under {limit.min_rate:.0f} bytes/s"
                    )
    # read(amt) returns b"" when the server closes early, without raising: compare with the announced length.
    if total is not None and received != total:
        raise http.client.IncompleteRead(b"", total - received)


def _check_md5(path: Path, expected: str, source: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise PipelineError(f"{source}: MD5 mismatch: expected {expected}, got {actual}; the file was discarded")


def _offline_help(target: Path, md5: str) -> str:
    return (
        f"To run offline, place the official file at {target} (MD5 {md5}), or point data.mirror in params.yaml "
        f"(or the {MIRROR_ENV} environment variable) at a folder that holds {target.name}."
    )


# --- checking and preparing ---------------------------------------------------------------------------------


def expected_meta(params: DataParams, path: Path, md5: str) -> DatasetMeta:
    """The facts the file must agree with: the official table, or what params declare for custom data."""
    if params.flag == "custom":
        with np.load(path, allow_pickle=False) as npz:
            counts = {s: int(npz[f"{s}_labels"].shape[0]) for s in SPLITS if f"{s}_labels" in npz.files}
        c = params.custom
        return DatasetMeta("custom", params.size, c.task, list(c.labels), 0, counts, md5, path.name)
    info = DATASETS[params.flag]
    return DatasetMeta(
        info.flag, params.size, info.task, list(info.labels), info.n_channels, dict(info.n_samples), md5, path.name
    )


def prepare(source: Path, meta: DatasetMeta, out_dir: Path) -> DatasetMeta:
    """Check ``source`` against ``meta`` and write ``{split}_images.npy``, ``{split}_labels.npy``, ``meta.json``.

    Images are streamed from the zip into ``.npy`` memory maps, so no more than one chunk is held in RAM.
    Returns ``meta`` completed with the channel count found in the file (custom data declares none).
    """
    name = source.name
    try:
        npz = np.load(source, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PipelineError(f"{name}: not a readable npz archive ({exc})") from None
    with npz:
        missing = [k for k in ARRAY_KEYS if k not in npz.files]
        if missing:
            raise PipelineError(f"{name}: missing arrays {', '.join(missing)} (expected {', '.join(ARRAY_KEYS)})")
        channels = None
        for split in SPLITS:
            labels = _checked_labels(npz[f"{split}_labels"], meta, f"{name}: {split}_labels")
            shape = _copy_images(source, f"{split}_images", out_dir / f"{split}_images.npy", meta)
            if len(labels) != shape[0]:
                raise PipelineError(f"{name}: {split} has {shape[0]} images but {len(labels)} labels")
            if meta.flag != "custom" and shape[0] != meta.n_samples[split]:
                raise PipelineError(
                    f"{name}: {split} has {shape[0]} images, the official {meta.flag} has {meta.n_samples[split]}"
                )
            found = 1 if len(shape) == 3 else shape[3]
            if channels not in (None, found):
                raise PipelineError(f"{name}: {split}_images has {found} channels, the other splits {channels}")
            channels = found
            np.save(out_dir / f"{split}_labels.npy", labels)
            if split == "train":
                _check_labels_used(labels, meta, name)
    meta = DatasetMeta(**{**asdict(meta), "n_channels": channels})
    (out_dir / "meta.json").write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def _check_labels_used(train: np.ndarray, meta: DatasetMeta, name: str) -> None:
    """Custom data: every declared class occurs in the training labels, or the task and label names do not describe
    this file (e.g. three names on 0/1 data would train a 3-output model on two classes without complaint)."""
    if meta.flag != "custom" or meta.multi_label:
        return
    present = np.unique(train[:, 0])
    absent = [label for i, label in enumerate(meta.labels) if i not in present]
    if absent:
        raise PipelineError(
            f"{name}: data.custom.labels names {meta.num_outputs} classes for task {meta.task!r}, but the training "
            f"labels never use {', '.join(repr(a) for a in absent)} (values found: "
            f"{', '.join(map(str, present.tolist()))}); fix data.custom.task or data.custom.labels"
        )


def _checked_labels(labels: np.ndarray, meta: DatasetMeta, what: str) -> np.ndarray:
    if labels.dtype.kind not in "iu":
        raise PipelineError(f"{what}: dtype {labels.dtype}, expected integers")
    if labels.ndim == 1:
        labels = labels[:, None]
    width = meta.num_outputs if meta.multi_label else 1
    if labels.ndim != 2 or labels.shape[1] != width:
        raise PipelineError(f"{what}: shape {labels.shape}, expected (N, {width}) for task {meta.task!r}")
    high = 1 if meta.multi_label else meta.num_outputs - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise PipelineError(
            f"{what}: values from {labels.min()} to {labels.max()}, expected 0..{high} "
            f"({meta.num_outputs} labels: {', '.join(meta.labels)})"
        )
    return labels.astype(np.int64)


def npy_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the header of an open ``.npy`` stream, without reading its data: the
    size an array claims is known (and checked) before anything is decompressed."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(f)
    return tuple(shape), bool(fortran_order), np.dtype(dtype)


def _copy_images(source: Path, key: str, target: Path, meta: DatasetMeta) -> tuple[int, ...]:
    what = f"{source.name}: {key}"
    with zipfile.ZipFile(source) as zf, zf.open(f"{key}.npy") as f:
        shape, fortran_order, dtype = npy_header(f)
        if dtype != np.uint8:
            raise PipelineError(f"{what}: dtype {dtype}, expected uint8")
        expected_channels = meta.n_channels or (shape[3] if len(shape) == 4 else 1)
        grey_ok = len(shape) == 3 and expected_channels == 1
        rgb_ok = len(shape) == 4 and shape[3] == expected_channels == 3
        if not (grey_ok or rgb_ok) or shape[1:3] != (meta.size, meta.size):
            want = f"(N, {meta.size}, {meta.size}" + (", 3)" if expected_channels == 3 else ")")
            raise PipelineError(f"{what}: shape {shape}, expected {want} (data.size is {meta.size})")
        if fortran_order:
            raise PipelineError(f"{what}: Fortran-ordered array; save it C-ordered (np.ascontiguousarray)")
        out = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=shape)
        flat, chunk = out.reshape(-1), 64 << 20
        for start in range(0, flat.size, chunk):
            data = f.read(min(chunk, flat.size - start))
            if not data:
                raise PipelineError(f"{what}: archive member ends early")
            flat[start : start + len(data)] = np.frombuffer(data, np.uint8)
        out.flush()
        del out
    return tuple(shape)


# --- loading (later stages) ---------------------------------------------------------------------------------


def load_meta(prepared_dir: str | Path) -> DatasetMeta:
    return DatasetMeta(**json.loads((Path(prepared_dir) / "meta.json").read_text()))


def load_split(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images memory-mapped uint8 (N, H, W[, C]), labels int64 (N, L)) of one split."""
    prepared_dir = Path(prepared_dir)
    images = np.load(prepared_dir / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
    labels = np.load(prepared_dir / f"{split}_labels.npy", allow_pickle=False)
    return images, labels


def class_counts(labels: np.ndarray, meta: DatasetMeta) -> dict[str, int]:
    """Images per class; for multi-label data, positives per label."""
    counts = labels.sum(axis=0) if meta.multi_label else np.bincount(labels[:, 0], minlength=meta.num_outputs)
    return {name: int(n) for name, n in zip(meta.labels, counts, strict=True)}


def examples_per_class(
    images: np.ndarray, labels: np.ndarray, meta: DatasetMeta, count: int = 8
) -> list[tuple[str, np.ndarray]]:
    """The first ``count`` images of each class (of each label's positives, for multi-label data), for a grid."""
    rows = []
    for index, name in enumerate(meta.labels):
        chosen = (labels[:, index] == 1) if meta.multi_label else (labels[:, 0] == index)
        rows.append((name, images[chosen.nonzero()[0][:count]]))
    return rows


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W): a view of the memory-mapped .npy (see load_splits), not a RAM copy
    labels: np.ndarray  # as stored: (N, 1) class index or (N, L) 0/1


def load_splits(prepared_dir: Path, names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Split]:
    """The prepared splits, images memory-mapped: scoring reads them a batch at a time, so anonymous memory holds
    batches and scores, not the split (file-backed pages are shared and reclaimable). Copy-on-write maps: a tensor
    view needs a writable array, and a stray write changes only a private page, never the file."""
    splits = {}
    for name in names:
        _, labels = load_split(prepared_dir, name)
        images = np.load(Path(prepared_dir) / f"{name}_images.npy", mmap_mode="c", allow_pickle=False)
        splits[name] = Split(nchw_view(images), np.asarray(labels))  # no copy: the map itself
    return splits

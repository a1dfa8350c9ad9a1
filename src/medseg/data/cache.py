"""On-disk cache of preprocessed segmentation cases: datasets larger than memory.

Keeping every preprocessed case in RAM (images float32, labels int64) limits training to datasets
that fit in memory; the Medical Segmentation Decathlon's liver task alone is tens of GB. The
cache writes each case once as two ``.npy`` files and training reads them lazily:

* **Layout.** ``<root>/<key[:24]>/`` holds ``case_<i>_image.npy`` (``(C, *spatial)`` float32,
  exactly :func:`~medseg.data.preprocess.preprocess_image`'s output), ``case_<i>_label.npy``
  (``(*spatial)`` in the smallest integer type that holds every declared label value, uint8 for
  fewer than 256 classes) and ``manifest.json``: the key, the preprocessing plan, the dataset
  summary and per case its files, byte sizes, shape, each channel's minimum (the patch
  sampler's padding value) and its normalisation affine (raw-domain augmentation).
* **Key.** A SHA-256 over the settings that shape the arrays (spatial dimensionality, the
  ``preprocess`` section, the intensity-sampling seed, the dataset's label table, channels and
  modalities, this cache format and the medseg version) and every input file's
  ``(path, size, mtime)``. A changed plan setting or a touched input file gives another key, so
  another folder: a stale cache is never read.
* **Atomic.** Every file goes through :func:`medseg.io.atomic.atomic_path` (temporary name,
  fsync, rename); the manifest is removed before a rebuild starts and written last, so a cache
  interrupted while being built has no manifest and is not trusted.
* **Checked on open.** A missing or unreadable manifest, another key or format, a missing file,
  a file whose size differs from the manifest's (a truncated ``.npy``) or whose header gives
  another shape or dtype makes :func:`open_cache` refuse it, and the caller rebuilds.
* **Lazy.** :class:`CachedCases` is a sequence whose items are opened on access with
  ``np.load(mmap_mode="r")`` and not kept: a patch copies its voxels out of the mapping, and
  the mapping goes when the patch is made, so the process's resident memory does not grow with
  the number of cases.
* **Workers.** :func:`build_cache` preprocesses cases in ``workers`` processes
  (:class:`concurrent.futures.ProcessPoolExecutor`); every case is computed independently of the
  others, so the files are identical for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from medseg.data.layouts import SegCase, SegDataset
from medseg.data.preprocess import (
    PreprocessPlan,
    channel_affine,
    preprocess_image,
    preprocess_label,
)
from medseg.errors import InputError
from medseg.io.atomic import atomic_path, atomic_write_text

#: Bumped whenever the files or the manifest change meaning; part of the key.
CACHE_FORMAT = 1
MANIFEST_NAME = "manifest.json"
#: Folder of caches beside the output folder when ``data.cache_dir`` is not set.
DEFAULT_CACHE_FOLDER = ".medseg_cache"
#: Fewest cases for which ``workers: 0`` (auto) starts worker processes.
AUTO_MIN_CASES = 16
#: Largest number of worker processes ``workers: 0`` (auto) picks.
AUTO_WORKERS_MAX = 4


def smallest_label_dtype(values: Sequence[int]) -> np.dtype:
    """The smallest integer dtype holding every value (unsigned when none is negative).

    Args:
        values: The label values that can occur (declared classes and the ignore label).

    Returns:
        ``uint8`` for values in ``[0, 255]``, then ``uint16``, ``uint32``; ``int8`` / ``int16`` /
        ``int32`` / ``int64`` when a value is negative.
    """
    lo, hi = (min(values), max(values)) if len(values) else (0, 0)
    candidates = ((np.uint8, np.uint16, np.uint32, np.uint64) if lo >= 0
                  else (np.int8, np.int16, np.int32, np.int64))
    for t in candidates:
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return np.dtype(t)
    return np.dtype(np.int64)


def default_cache_root(output_dir: str | Path) -> Path:
    """``<parent of the output folder>/.medseg_cache``: shared by the runs written beside each
    other (``runs/a``, ``runs/b``), outside the model folder so it is not copied with it."""
    return Path(output_dir).expanduser().resolve().parent / DEFAULT_CACHE_FOLDER


def resolve_workers(workers: int, n_cases: int) -> int:
    """Processes to preprocess ``n_cases`` with: ``workers`` itself when ``>= 1``; for ``0``
    (auto) one below :data:`AUTO_MIN_CASES` cases, else the CPUs this process may use, at most
    :data:`AUTO_WORKERS_MAX` and ``n_cases``."""
    if workers >= 1:
        return int(workers)
    if n_cases < AUTO_MIN_CASES:  # starting the worker processes costs more than it saves
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, AUTO_WORKERS_MAX, n_cases))


def _file_stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError as e:
        raise InputError(f"cannot read the input file ({e.strerror})", path,
                         "check that the dataset is complete and readable") from None
    return [str(path.resolve()), int(st.st_size), int(st.st_mtime_ns)]


def cache_key(ds: SegDataset, settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of the settings and of every training input file's (path, size, mtime).

    Args:
        ds: The opened dataset (its training cases, label table, channels and modalities).
        settings: JSON-serialisable settings that change the preprocessed arrays (the caller
            passes the ``preprocess`` section, the spatial dimensionality, the seeds...).

    Returns:
        64 hex digits; any changed setting or touched file gives another key.
    """
    from medseg import __version__

    record = {
        "format": CACHE_FORMAT,
        "medseg": __version__,
        "settings": settings,
        "labels": sorted((str(k), int(v)) for k, v in ds.labels.items()),
        "ignore_label": ds.ignore_label,
        "channel_names": list(ds.channel_names),
        "modalities": list(ds.modalities),
        "cases": [[c.case_id, [_file_stat(p) for p in c.images],
                   None if c.label is None else _file_stat(c.label)] for c in ds.cases],
    }
    blob = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of an ``.npy`` file (reads only the header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if fortran:
            raise ValueError("Fortran-ordered array")
        return tuple(int(s) for s in shape), np.dtype(dtype), f.tell()


class CachedCases(Sequence[np.ndarray]):
    """Cached arrays opened lazily: item ``i`` is ``np.load(paths[i], mmap_mode="r")``.

    Nothing is kept open: each access maps the file afresh (about 0.1 ms), and the mapping goes
    when the caller drops the array. Slicing gives another :class:`CachedCases`.

    Args:
        paths: One ``.npy`` file per case.
        shapes: Each file's array shape (from the manifest; :attr:`shapes` without opening).
        channel_min: Per case, ``(C,)`` minimum of each channel (images only; the patch sampler
            pads with it).
    """

    def __init__(self, paths: Sequence[Path], shapes: Sequence[Sequence[int]],
                 channel_min: Sequence[np.ndarray] | None = None):
        if len(paths) != len(shapes) or (channel_min is not None
                                         and len(channel_min) != len(paths)):
            raise ValueError("need one shape (and channel minimum) per cached file")
        self.paths = [Path(p) for p in paths]
        self.shapes = [tuple(int(s) for s in sh) for sh in shapes]
        self.channel_min = None if channel_min is None else [np.asarray(m, dtype=np.float32)
                                                             for m in channel_min]

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> CachedCases: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | CachedCases:
        if isinstance(i, slice):
            return CachedCases(self.paths[i], self.shapes[i],
                               None if self.channel_min is None else self.channel_min[i])
        return np.load(self.paths[i], mmap_mode="r")

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]


@dataclass
class CacheEntry:
    """One cached case, as recorded in the manifest.

    Attributes:
        case_id: The dataset's case id.
        image: Image file name (in the cache folder).
        label: Label file name.
        shape: Spatial shape after preprocessing.
        channels: Number of image channels C.
        image_bytes: Size of the image file.
        label_bytes: Size of the label file.
        channel_min: ``C`` floats: each channel's minimum after preprocessing.
        affine: ``C`` pairs ``(scale, offset)`` of each channel's normalisation
            (:func:`~medseg.data.preprocess.channel_affine` on the raw image).
    """

    case_id: str
    image: str
    label: str
    shape: list[int]
    channels: int
    image_bytes: int
    label_bytes: int
    channel_min: list[float]
    affine: list[list[float]]


@dataclass
class PreprocessedCache:
    """A complete, checked cache folder.

    Attributes:
        folder: Where the files are.
        key: Its key (:func:`cache_key`).
        plan: The preprocessing plan the arrays were made with.
        summary: The dataset summary (:meth:`~medseg.data.validate.DatasetSummary.to_dict`).
        label_dtype: The label files' dtype.
        entries: Per case id, its :class:`CacheEntry` (dataset order).
    """

    folder: Path
    key: str
    plan: PreprocessPlan
    summary: dict[str, Any]
    label_dtype: np.dtype
    entries: dict[str, CacheEntry]

    def images(self, ids: Sequence[str]) -> CachedCases:
        """The ``(C, *spatial)`` float32 images of ``ids``, opened lazily."""
        es = [self.entries[i] for i in ids]
        return CachedCases([self.folder / e.image for e in es],
                           [[e.channels, *e.shape] for e in es],
                           [np.asarray(e.channel_min, dtype=np.float32) for e in es])

    def labels(self, ids: Sequence[str]) -> CachedCases:
        """The ``(*spatial)`` label maps of ``ids`` (:attr:`label_dtype`), opened lazily."""
        es = [self.entries[i] for i in ids]
        return CachedCases([self.folder / e.label for e in es], [e.shape for e in es])

    def affines(self, ids: Sequence[str]) -> list[np.ndarray]:
        """``(C, 2)`` float64 normalisation affines of ``ids``."""
        return [np.asarray(self.entries[i].affine, dtype=np.float64) for i in ids]


def _check_file(path: Path, nbytes: int, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why ``path`` cannot be trusted, or ``None`` when it is whole."""
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path.name} is missing"
    if size != nbytes:
        return f"{path.name} has {size} bytes, the manifest says {nbytes} (truncated or replaced)"
    try:
        got_shape, got_dtype, offset = _npy_header(path)
    except (OSError, ValueError, SyntaxError) as e:
        return f"{path.name} has no valid .npy header ({e})"
    if got_shape != shape or got_dtype != dtype:
        return f"{path.name} holds {got_dtype}{list(got_shape)}, expected {dtype}{list(shape)}"
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if needed != size:
        return f"{path.name} is {size} bytes, its header needs {needed}"
    return None


def open_cache(folder: Path, key: str) -> tuple[PreprocessedCache | None, str]:
    """Open the cache in ``folder`` if it is complete, matches ``key`` and every file is whole.

    Args:
        folder: The cache folder.
        key: The key the caller expects (:func:`cache_key`).

    Returns:
        ``(cache, "hit")``, or ``(None, reason)`` naming the first problem (no manifest, another
        key or format, a missing, truncated or mismatched file).
    """
    mpath = folder / MANIFEST_NAME
    if not mpath.is_file():
        return None, "no manifest (not built yet, or a build was interrupted)"
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
        if m.get("format") != CACHE_FORMAT:
            return None, f"cache format {m.get('format')} (this medseg writes {CACHE_FORMAT})"
        if m.get("key") != key:
            return None, "the manifest's key differs (other settings or input files)"
        plan = PreprocessPlan.from_dict(m["plan"])
        label_dtype = np.dtype(m["label_dtype"])
        entries = {e["case_id"]: CacheEntry(**e) for e in m["cases"]}
        summary = dict(m["summary"])
        for k in ("class_fractions", "class_case_counts"):  # JSON made the label keys strings
            if isinstance(summary.get(k), dict):
                summary[k] = {int(v): c for v, c in summary[k].items()}
    except (OSError, ValueError, KeyError, TypeError, InputError) as e:
        return None, f"unreadable manifest ({type(e).__name__}: {e})"
    for e in entries.values():
        why = (_check_file(folder / e.image, e.image_bytes, (e.channels, *e.shape),
                           np.dtype(np.float32))
               or _check_file(folder / e.label, e.label_bytes, tuple(e.shape), label_dtype))
        if why is not None:
            return None, why
    return PreprocessedCache(folder, key, plan, summary, label_dtype, entries), "hit"


def _save_npy(dest: Path, array: np.ndarray) -> int:
    with atomic_path(dest, ".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return dest.stat().st_size


def preprocess_case(case: SegCase, plan: PreprocessPlan, label_dtype: np.dtype
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one case and bring it onto the plan's grid, exactly as the in-memory path does.

    Args:
        case: A labelled case.
        plan: The preprocessing plan.
        label_dtype: The dtype to store labels in (:func:`smallest_label_dtype`).

    Returns:
        ``image (C, *spatial) float32``, ``label (*spatial) label_dtype`` and ``(C, 2)`` float64
        normalisation affines of the raw image.

    Raises:
        InputError: a label value the dtype cannot hold (naming the label file).
    """
    from medseg.io import read_image, read_label

    assert case.label is not None
    image, meta = read_image(case.images if len(case.images) > 1 else case.images[0])
    label, _ = read_label(case.label)
    affine = np.array([channel_affine(image[c], n) for c, n in enumerate(plan.normalization)],
                      dtype=np.float64)
    x, _ = preprocess_image(image, meta, plan)
    y, _ = preprocess_label(label, meta, plan)
    info = np.iinfo(label_dtype)
    if y.size and (int(y.min()) < info.min or int(y.max()) > info.max):
        raise InputError(f"label values {int(y.min())}..{int(y.max())} do not fit the cache's "
                         f"{label_dtype} labels", case.label,
                         "declare every label value in dataset.json")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(label_dtype), affine


def _build_one(job: tuple[int, SegCase, PreprocessPlan, str, Path]) -> dict[str, Any]:
    """Worker: preprocess case ``i`` and write its two files; returns its manifest entry."""
    i, case, plan, dtype_name, folder = job
    x, y, affine = preprocess_case(case, plan, np.dtype(dtype_name))
    image_name, label_name = f"case_{i:05d}_image.npy", f"case_{i:05d}_label.npy"
    image_bytes = _save_npy(folder / image_name, x)
    label_bytes = _save_npy(folder / label_name, y)
    cmin = x.reshape(x.shape[0], -1).min(axis=1) if x[0].size else np.zeros(x.shape[0])
    return vars(CacheEntry(case.case_id, image_name, label_name, [int(s) for s in x.shape[1:]],
                           int(x.shape[0]), image_bytes, label_bytes,
                           [float(v) for v in cmin], affine.tolist()))


def build_cache(folder: Path, key: str, ds: SegDataset, plan: PreprocessPlan,
                summary: dict[str, Any], workers: int = 1) -> PreprocessedCache:
    """Preprocess every training case of ``ds`` into ``folder`` and write the manifest last.

    Args:
        folder: The cache folder (created; an old manifest in it is removed first).
        key: :func:`cache_key` of the dataset and settings.
        ds: The validated dataset.
        plan: The preprocessing plan.
        summary: The dataset summary dict, stored so a cache hit needs no validation pass.
        workers: Processes (``0`` = auto, see :func:`resolve_workers`; ``1`` = this process).

    Returns:
        The cache just written.

    Raises:
        InputError: a case that cannot be preprocessed, or a folder that cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
    values = list(ds.allowed_label_values) or [0]
    dtype = smallest_label_dtype(values)
    jobs = [(i, c, plan, dtype.name, folder) for i, c in enumerate(ds.cases)]
    n = resolve_workers(workers, len(jobs))
    if n <= 1:
        entries = [_build_one(j) for j in jobs]
    else:
        # never fork this process: it may hold torch / OpenMP threads (training, a test run),
        # and a forked child that touches a lock one of them held waits forever; a fork server
        # starts from a fresh interpreter
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        try:
            with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context(method)) as pool:
                entries = list(pool.map(_build_one, jobs))
        except BrokenProcessPool:
            raise InputError(
                f"the {n} processes preprocessing the cache stopped abruptly (a script that "
                "calls medseg's train must do so under if __name__ == '__main__':, since each "
                "worker process imports the script; or the memory ran out)", folder,
                "put the call under that guard, or set data.workers: 1") from None
    manifest = {"format": CACHE_FORMAT, "key": key, "plan": plan.to_dict(),
                "summary": summary, "label_dtype": dtype.name, "cases": entries}
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1))
    # built from what was written, not re-opened: another process building the same key at the
    # same time (DDP ranks) writes byte-identical files and may remove the manifest meanwhile
    return PreprocessedCache(folder, key, plan, summary, dtype,
                             {e["case_id"]: CacheEntry(**e) for e in entries})

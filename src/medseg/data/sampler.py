"""Patch sampling with foreground oversampling (T6), background prefetch, whole-image batches.

Class imbalance is a property of the data (T6): a lesion that fills 0.1% of a volume lands in a
uniformly drawn patch only rarely. :class:`PatchSampler` therefore forces part of every batch to
be centred on a foreground voxel:

* per case and per foreground class, the flat indices of that class's voxels are computed once,
  the first time the case is forced onto foreground (at most ``max_fg_voxels`` of them, subsampled
  with a generator seeded by ``(seed, case)``, so the table does not depend on when it is built),
  so drawing a forced centre is O(1) and starting the sampler reads no label map;
* in each batch of ``B`` samples the *last* ``n_fg`` are forced (as in nnU-Net), with
  ``n_fg = B * fg_oversample`` rounded stochastically, so that the long-run fraction of forced
  patches is exactly ``fg_oversample`` even for ``B = 1`` (nnU-Net rounds deterministically, which
  forces nothing at ``B = 1`` and half the batch at ``B = 2``);
* a forced patch picks a class uniformly among the foreground classes present in the case, then a
  voxel of that class uniformly, and centres the patch on it (clipped to stay inside the image
  when the image is larger than the patch);
* the other patches have a uniformly random position.

Cases smaller than the patch are padded: images with each channel's minimum over the case
(background intensity, not an artificial 0 that after z-scoring means "average tissue"), labels
with the ignore label if there is one (padding is then excluded from the loss, T5) else 0.

Cases may be in memory or on disk: ``images`` and ``labels`` are any sequences of arrays, e.g.
:class:`medseg.data.cache.CachedCases`, whose items are memory maps opened on access. The sampler
keeps no item: it copies each patch out of the array it was handed, so a cached dataset never
becomes resident as a whole (pass ``pad_values`` then, so the minima are not computed by reading
every image).

Every draw comes from one ``numpy.random.Generator`` seeded with ``(seed, rank)``: streams are
deterministic, differ between DDP ranks, and :meth:`PatchSampler.state_dict` captures them so a
resumed run continues with exactly the batches it would have drawn.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


class PatchSampler:
    """Infinite iterator of random training patches.

    Args:
        images: Preprocessed cases, each ``(C, *spatial)`` float32 (same C and dimensionality).
        labels: Matching label maps ``(*spatial)`` integer.
        patch_size: Spatial patch size (one entry per axis).
        batch_size: Patches per batch.
        fg_oversample: Fraction of patches forced onto foreground (0 disables).
        foreground_labels: Label values to oversample; default every value other than 0 and the
            ignore label that occurs in the data.
        ignore_label: Unlabelled value (used for padding and excluded from the foreground).
        seed: Base seed.
        rank: This process's DDP rank (the stream is seeded with ``(seed, rank)``).
        world_size: Number of DDP processes. Every rank samples from all cases with its own
            stream (equivalent in expectation to sharding the cases, and it never runs dry).
        max_fg_voxels: Cap on stored foreground indices per class and case.
        pad_values: Per case, ``(C,)`` padding value of each channel; default each channel's
            minimum over the case (computed here, which reads every image once).

    Yields:
        ``(image, label)`` with image ``(B, C, *patch_size)`` float32 and label
        ``(B, 1, *patch_size)`` int64.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: Sequence[int],
        batch_size: int,
        fg_oversample: float = 0.33,
        foreground_labels: Sequence[int] | None = None,
        ignore_label: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_fg_voxels: int = 10_000,
        pad_values: Sequence[np.ndarray] | None = None,
    ):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"need as many label maps as images (>0), got {len(images)} images "
                             f"and {len(labels)} labels")
        self.patch_size = tuple(int(p) for p in patch_size)
        d = len(self.patch_size)
        for i, (im, lb) in enumerate(zip(images, labels, strict=True)):
            if im.ndim != d + 1 or tuple(lb.shape) != tuple(im.shape[1:]):
                raise ValueError(
                    f"case {i}: image {tuple(im.shape)} / label {tuple(lb.shape)} do not match a "
                    f"(C, *spatial) image with {d} spatial axes and a (*spatial) label"
                )
        if batch_size < 1 or not 0.0 <= fg_oversample <= 1.0:
            raise ValueError("batch_size must be >= 1 and fg_oversample in [0, 1]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        # lists are copied as before; a lazy sequence (CachedCases) is kept as it is
        self.images = list(images) if isinstance(images, list | tuple) else images
        self.labels = list(labels) if isinstance(labels, list | tuple) else labels
        self.batch_size = int(batch_size)
        self.fg_oversample = float(fg_oversample)
        self.ignore_label = ignore_label
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.rng = np.random.default_rng([self.seed, self.rank])
        if pad_values is None:
            pad_values = [np.asarray(im).reshape(im.shape[0], -1).min(axis=1) for im in images]
        elif len(pad_values) != len(images):
            raise ValueError(f"need one pad value array per case, got {len(pad_values)} for "
                             f"{len(images)} cases")
        self.pad_values = [np.asarray(v, dtype=np.float32) for v in pad_values]
        self.label_pad = 0 if ignore_label is None else int(ignore_label)
        self.foreground_labels = (None if foreground_labels is None
                                  else [int(v) for v in foreground_labels])
        self.max_fg_voxels = int(max_fg_voxels)
        # foreground index tables, built on first use; identical on every rank
        self.fg_indices: list[dict[int, np.ndarray] | None] = [None] * len(images)
        self.batches_drawn = 0
        self.last_cases: list[int] = []

    def foreground_table(self, case: int, label: np.ndarray | None = None
                         ) -> dict[int, np.ndarray]:
        """Class -> flat indices of that class's voxels in ``case`` (built once, then kept).

        At most ``max_fg_voxels`` indices per class, a sorted subsample drawn with a generator
        seeded by ``(seed, 2**31 - 1, case)``; int32 when the case has fewer than 2^31 voxels.

        Args:
            case: Case index.
            label: The case's label map if the caller already holds it.
        """
        table = self.fg_indices[case]
        if table is not None:
            return table
        flat = np.asarray(self.labels[case] if label is None else label).ravel()
        if self.foreground_labels is None:
            present = np.unique(flat)
            classes = [int(v) for v in present if v != 0 and v != self.ignore_label]
        else:
            classes = self.foreground_labels
        table_rng = np.random.default_rng([self.seed, 2**31 - 1, case])
        index_type = np.int32 if flat.size < 2**31 else np.int64
        table = {}
        for c in classes:
            idx = np.flatnonzero(flat == c)
            if idx.size == 0:
                continue
            if idx.size > self.max_fg_voxels:
                idx = np.sort(table_rng.choice(idx, size=self.max_fg_voxels, replace=False))
            table[c] = idx.astype(index_type)
        self.fg_indices[case] = table
        return table

    # state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """RNG state and counter; :meth:`load_state_dict` resumes the exact stream."""
        return {"rng": copy.deepcopy(self.rng.bit_generator.state),
                "batches_drawn": self.batches_drawn, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.batches_drawn = int(state["batches_drawn"])

    # sampling -----------------------------------------------------------------------------
    def _n_forced(self) -> int:
        x = self.batch_size * self.fg_oversample
        n = int(np.floor(x))
        frac = x - n
        u = self.rng.random()  # always drawn, so the stream does not depend on frac
        return min(self.batch_size, n + int(u < frac))

    def _start(self, size: int, p: int, centre: int | None) -> int:
        """Lower corner of a patch of size ``p`` on an axis of ``size`` voxels (may be < 0)."""
        lo, hi = min(0, size - p), max(0, size - p)
        if centre is None:
            return int(self.rng.integers(lo, hi + 1))
        return int(np.clip(centre - p // 2, lo, hi))

    def _crop(self, case: int, starts: Sequence[int], im: np.ndarray, lb: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Copy the patch at ``starts`` out of ``im`` / ``lb`` (padded where it leaves them)."""
        C = im.shape[0]
        out_im = np.empty((C, *self.patch_size), dtype=np.float32)
        out_im[...] = self.pad_values[case].reshape(C, *([1] * len(self.patch_size)))
        out_lb = np.full(self.patch_size, self.label_pad, dtype=np.int64)
        src, dst = [], []
        for s, p, n in zip(starts, self.patch_size, lb.shape, strict=True):
            a, b = max(s, 0), min(s + p, n)
            src.append(slice(a, b))
            dst.append(slice(a - s, b - s))
        out_im[(slice(None), *dst)] = im[(slice(None), *src)]
        out_lb[tuple(dst)] = lb[tuple(src)]
        return out_im, out_lb

    def sample_patch(self, force_fg: bool) -> tuple[np.ndarray, np.ndarray, int]:
        """One patch: ``((C, *patch), (*patch), case index)``."""
        case = int(self.rng.integers(len(self.images)))
        lb = self.labels[case]
        shape = lb.shape
        centre: tuple[int, ...] | None = None
        table = self.foreground_table(case, lb) if force_fg else {}
        if table:
            classes = sorted(table)
            cls = classes[int(self.rng.integers(len(classes)))]
            idx = table[cls]
            flat = int(idx[int(self.rng.integers(idx.size))])
            centre = tuple(int(v) for v in np.unravel_index(flat, shape))
        starts = [
            self._start(n, p, None if centre is None else centre[k])
            for k, (n, p) in enumerate(zip(shape, self.patch_size, strict=True))
        ]
        im, lb_patch = self._crop(case, starts, self.images[case], lb)
        return im, lb_patch, case

    def sample_batch(self) -> Batch:
        """One batch: image ``(B, C, *patch)`` float32, label ``(B, 1, *patch)`` int64.

        The case index of each sample is left in :attr:`last_cases` (per-case augmentation such
        as the physical noise model needs the case's normalisation).
        """
        n_fg = self._n_forced()
        ims, lbs, cases = [], [], []
        for j in range(self.batch_size):
            im, lb, case = self.sample_patch(force_fg=j >= self.batch_size - n_fg)
            ims.append(im)
            lbs.append(lb)
            cases.append(case)
        self.last_cases = cases
        self.batches_drawn += 1
        return torch.from_numpy(np.stack(ims)), torch.from_numpy(np.stack(lbs)[:, None])

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.sample_batch()


class PatchBatchLoader:
    """Prepares the next batches (sampling + augmentation) in a background thread.

    A thread rather than worker processes: processes would copy the in-memory cases and start
    slowly, while numpy cropping and torch augmentation release the GIL for their heavy parts, so
    one thread overlaps well with the model's forward/backward on a small CPU.

    ``wait_time`` accumulates the seconds :meth:`__next__` spent blocked waiting for a batch;
    ``wait_time / elapsed`` is the data-wait fraction a training loop can report.

    Resume: :meth:`state_dict` returns the sampler (and augmenter) state *as of the last batch
    handed out* (not of the prefetched ones), so loading it into a fresh loader reproduces the
    exact batches that would have come next.

    Args:
        sampler: The patch sampler.
        augment: Optional callable ``(image, label) -> (image, label)`` on batches (e.g. an
            :class:`~medseg.transforms.augment.Augmenter`); its ``state_dict`` is saved if it
            has one.
        prefetch: Batches prepared ahead (queue length); 0 disables the thread (synchronous).
    """

    def __init__(
        self,
        sampler: PatchSampler,
        augment: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]] | None = None,
        prefetch: int = 2,
    ):
        self.sampler = sampler
        self.augment = augment
        self.prefetch = int(prefetch)
        self.wait_time = 0.0
        self.batches_served = 0
        self._state = self._snapshot()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _snapshot(self) -> dict[str, Any]:
        st: dict[str, Any] = {"sampler": self.sampler.state_dict()}
        if self.augment is not None and hasattr(self.augment, "state_dict"):
            st["augment"] = self.augment.state_dict()
        return st

    def _make(self) -> tuple[Batch, dict[str, Any]]:
        img, lab = self.sampler.sample_batch()
        if self.augment is not None:
            img, lab = self.augment(img, lab)
        return (img, lab), self._snapshot()

    def _worker(self) -> None:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                item: Any = self._make()
            except BaseException as e:  # forwarded to the consumer
                item = e
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def start(self) -> None:
        """Start the background thread (called by the first :meth:`__next__`)."""
        if self.prefetch <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(target=self._worker, name="medseg-prefetch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and drop prefetched batches."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._queue = None

    def __enter__(self) -> PatchBatchLoader:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        if self.prefetch <= 0:
            batch, state = self._make()
        else:
            self.start()
            assert self._queue is not None
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.close()
                raise item
            batch, state = item
        self.wait_time += time.perf_counter() - t0
        self._state = state
        self.batches_served += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """State after the last batch served (see the class docstring)."""
        return {**copy.deepcopy(self._state), "batches_served": self.batches_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (stops the thread; the next batch restarts it)."""
        self.close()
        self.sampler.load_state_dict(state["sampler"])
        if "augment" in state and self.augment is not None and hasattr(self.augment,
                                                                       "load_state_dict"):
            self.augment.load_state_dict(state["augment"])
        self.batches_served = int(state.get("batches_served", 0))
        self._state = self._snapshot()


def full_image_batches(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None = None,
    case_ids: Sequence[str] | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """Whole validation cases one at a time (they differ in shape, so no stacking).

    Args:
        images: ``(C, *spatial)`` arrays.
        labels: Matching ``(*spatial)`` label maps, or ``None``.
        case_ids: Names; default ``"0"``, ``"1"`` ...

    Yields:
        ``(case_id, image (1, C, *spatial) float32, label (1, 1, *spatial) int64 or None)``.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} label maps")
    ids = list(case_ids) if case_ids is not None else [str(i) for i in range(len(images))]
    for i, im in enumerate(images):
        x = torch.from_numpy(owned_array(im, np.float32))[None]
        y = None
        if labels is not None:
            y = torch.from_numpy(owned_array(labels[i], np.int64))[None, None]
        yield ids[i], x, y


def owned_array(a: np.ndarray, dtype: type[np.generic]) -> np.ndarray:
    """``a`` as a writable, C-contiguous array of ``dtype`` (a read-only memory map is copied
    into memory; an in-memory array of the right kind is returned as it is)."""
    out = np.asarray(a, dtype=dtype)
    if not out.flags.writeable or not out.flags.c_contiguous or isinstance(a, np.memmap):
        out = np.array(out, dtype=dtype, order="C")
    return out

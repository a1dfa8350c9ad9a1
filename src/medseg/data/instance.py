"""Instance segmentation datasets (T4): the DSB2018 layout and folders of instance label maps.

Two layouts are read:

* **DSB2018** (Kaggle Data Science Bowl 2018 / BBBC038): ``root/<id>/images/<id>.png`` and
  ``root/<id>/masks/*.png``, one binary PNG per instance. ``root`` may also be the folder that
  holds ``train/`` in this layout. Images (RGBA / RGB / grey) are converted to **one grey
  channel, the mean of the colour channels** (alpha dropped): DSB is mostly fluorescence, whose
  colour carries no extra information. Masks are painted in file-name order, so where two masks
  overlap **the later mask wins**. A mask with more than two grey values (anti-aliased edges, as
  in some BBBC038 sources) is an error unless ``mask_threshold`` is given; then a pixel belongs
  to the instance where ``value > mask_threshold * max(value)``.
* **label maps** (the StarDist sample layout): ``root/images/`` and ``root/masks/`` (or
  ``labels/``) holding TIFF / PNG / NIfTI / NRRD files matched by name (optional mask suffix),
  each mask an integer instance label map (0 background), 2D or 3D.

:func:`build_semantic_dataset` converts either into a :class:`~medseg.data.layouts.SegDataset`
the ordinary training pipeline consumes: its label files are the 3-class targets (background /
interior / boundary) of :func:`medseg.instance.instance_to_semantic`, written into a folder of
the caller's choice (the model folder in training), never beside the user's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.layouts import SegCase, SegDataset, strip_ending
from medseg.errors import InputError
from medseg.instance.targets import TARGET_LABELS, instance_to_semantic
from medseg.io import ImageMeta, list_image_files, read_image, read_label, write_image, write_label
from medseg.io.files import file_suffix
from medseg.io.paths import path_exists

_LABEL_FOLDERS = ("masks", "labels")


@dataclass
class InstanceCase:
    """One image with its instances.

    Attributes:
        case_id: Identifier (the DSB id or the image file stem).
        image: The image file.
        masks: DSB layout: one binary file per instance (sorted by name), else empty.
        label_map: Label-map layout: the instance label map file, else ``None``.
    """

    case_id: str
    image: Path
    masks: list[Path] = field(default_factory=list)
    label_map: Path | None = None

    @property
    def reference(self) -> Path:
        """The file (label map) or folder (DSB masks) holding the instances."""
        if self.label_map is not None:
            return self.label_map
        return self.masks[0].parent if self.masks else self.image.parent.parent / "masks"


@dataclass
class InstanceDataset:
    """Cases of an instance layout (``layout`` is ``"dsb2018"`` or ``"label_maps"``)."""

    root: Path
    cases: list[InstanceCase]
    layout: str

    def case(self, case_id: str) -> InstanceCase:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(case_id)


def is_dsb_layout(root: Path) -> bool:
    """True when ``root`` holds ``<id>/images/<id>.*`` subfolders (checks the first one)."""
    if not root.is_dir():
        return False
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return bool(subs) and (subs[0] / "images").is_dir()


def load_dsb2018(root: str | Path) -> InstanceDataset:
    """Read the DSB2018 layout (``root/<id>/images/<id>.png``, ``root/<id>/masks/*.png``).

    Raises:
        InputError: the folder is missing or empty, an id has no image, or no masks folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset folder not found", root, "check the path")
    if not is_dsb_layout(root) and is_dsb_layout(root / "train"):
        root = root / "train"
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise InputError("the DSB2018 folder is empty", root,
                         "put one folder per image: <id>/images/<id>.png and <id>/masks/*.png")
    cases = []
    for d in subs:
        imgs = [p for p in list_image_files(d / "images") if isinstance(p, Path)] \
            if (d / "images").is_dir() else []
        if not imgs:
            raise InputError("no image in the images folder of this case", d / "images",
                             f"put the image at {d / 'images' / (d.name + '.png')}")
        own = [p for p in imgs if strip_ending(p.name) == d.name]
        mdir = d / "masks"
        if not mdir.is_dir():
            raise InputError("the case has no masks folder", mdir,
                             "add one binary PNG per instance in <id>/masks/ (an image "
                             "without instances needs an empty masks folder)")
        masks = [p for p in list_image_files(mdir) if isinstance(p, Path)]
        cases.append(InstanceCase(d.name, (own or imgs)[0], masks))
    return InstanceDataset(root, cases, "dsb2018")


def load_instance_label_folders(images_dir: str | Path, masks_dir: str | Path,
                                mask_suffix: str = "") -> InstanceDataset:
    """Pair images with instance label maps by name (``{stem}`` <-> ``{stem}{mask_suffix}``).

    Raises:
        InputError: a folder missing or empty, or an image without a label map (named).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "images"), (masks_dir, "label maps")):
        if not d.is_dir():
            raise InputError(f"{what} folder not found", d, "check the path")
    imgs = [p for p in list_image_files(images_dir) if isinstance(p, Path) and p.is_file()]
    labs = [p for p in list_image_files(masks_dir) if isinstance(p, Path) and p.is_file()]
    if not imgs:
        raise InputError("no images in the folder", images_dir,
                         "put TIFF/PNG/NIfTI images there")
    if not labs:
        raise InputError("no instance label maps in the folder", masks_dir,
                         "put one integer label map per image there, named like the image")
    by_stem = {strip_ending(p.name): p for p in labs}
    cases = []
    for img in imgs:
        stem = strip_ending(img.name)
        lab = by_stem.get(stem + mask_suffix)
        if lab is None:
            raise InputError(f"image has no instance label map in {masks_dir}", img,
                             f"add {masks_dir / (stem + mask_suffix + file_suffix(img))} or "
                             "pass the right mask suffix")
        cases.append(InstanceCase(stem, img, [], lab))
    return InstanceDataset(images_dir.parent, cases, "label_maps")


def open_instance_dataset(path: str | Path, masks: str | Path | None = None,
                          mask_suffix: str = "") -> InstanceDataset:
    """Detect the layout: DSB2018 folder, ``images/`` + ``masks/``|``labels/``, or ``masks``.

    Raises:
        InputError: missing folder or unrecognised layout.
    """
    root = Path(path)
    if not path_exists(root):
        raise InputError("dataset folder not found", root, "check the path")
    if masks is not None:
        return load_instance_label_folders(root, masks, mask_suffix)
    if (root / "images").is_dir():
        for n in _LABEL_FOLDERS:
            if (root / n).is_dir():
                return load_instance_label_folders(root / "images", root / n, mask_suffix)
    if is_dsb_layout(root) or is_dsb_layout(root / "train"):
        return load_dsb2018(root)
    if root.is_dir() and not any(root.iterdir()):
        raise InputError("the dataset folder is empty", root, "check the path")
    raise InputError(
        "unrecognised instance dataset layout", root,
        "use the DSB2018 layout (<id>/images/<id>.png + <id>/masks/*.png, one PNG per "
        "instance) or images/ + masks/ folders of instance label maps matched by name")


def to_grey(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` -> ``(1, *spatial)`` float32 mean over channels."""
    return image.astype(np.float32).mean(axis=0, keepdims=True)


def read_instance_image(case: InstanceCase, grey: bool = True) -> tuple[np.ndarray, ImageMeta]:
    """The case's image, ``(C, *spatial)`` float32 (``(1, *spatial)`` grey when ``grey``)."""
    img, meta = read_image(case.image)
    return (to_grey(img) if grey and img.shape[0] > 1 else img), meta


def read_dsb_masks(masks: list[Path], shape: tuple[int, ...],
                   mask_threshold: float | None = None) -> np.ndarray:
    """Paint one binary mask per instance into an int32 label map (later masks win).

    Args:
        masks: Mask files, painted in this order with ids ``1..N``.
        shape: The image's spatial shape; each mask must match it.
        mask_threshold: ``None``: a mask must hold at most two values; else the instance is
            ``value > mask_threshold * max``.

    Raises:
        InputError: a mask of the wrong shape, an all-zero mask, or a non-binary mask (named).
    """
    out = np.zeros(shape, dtype=np.int32)
    for k, m in enumerate(masks, start=1):
        a, _ = read_label(m)
        if a.shape != tuple(shape):
            raise InputError(f"mask shape {a.shape} differs from the image shape {tuple(shape)}",
                             m, "each instance mask must have the image's size")
        vals = np.unique(a)
        top = float(vals[-1])
        if top <= 0:
            raise InputError("the instance mask is empty (all zero)", m,
                             "delete it or draw the instance")
        if mask_threshold is None:
            if vals.size > 2:
                raise InputError(
                    f"the instance mask is not binary ({vals.size} distinct values, e.g. "
                    f"{vals[1]!r})", m,
                    "save masks as 0/255 (or 0/1), or set instance.mask_threshold (e.g. 0.5) "
                    "to binarise soft / anti-aliased masks")
            fg = a > 0
        else:
            fg = a > mask_threshold * top
        out[fg] = k
    return out


def read_instance_map(case: InstanceCase, shape: tuple[int, ...] | None = None,
                      mask_threshold: float | None = None) -> np.ndarray:
    """The case's instances as an int64 label map (0 background).

    Args:
        case: The case.
        shape: Expected spatial shape (the image's); checked.
        mask_threshold: See :func:`read_dsb_masks`.

    Returns:
        ``(*spatial)`` int64; a label map whose ids exceed its voxel count is renumbered
        ``1..N`` in increasing id order (ids only name instances).

    Raises:
        InputError: shape mismatch, non-binary masks, non-integer or negative label maps.
    """
    if case.label_map is None:
        if shape is None:
            _, meta = read_image(case.image)
            shape = meta.spatial_shape
        return read_dsb_masks(case.masks, shape, mask_threshold).astype(np.int64)
    lab, meta = read_label(case.label_map)  # raises for non-integer values, naming the file
    if lab.size and lab.min() < 0:
        raise InputError(f"negative value {int(lab.min())} in an instance label map",
                         case.label_map, "use 0 for background and 1..N for the instances")
    if shape is not None and tuple(lab.shape) != tuple(shape):
        raise InputError(f"label map shape {tuple(lab.shape)} differs from the image shape "
                         f"{tuple(shape)} ({case.image})", case.label_map,
                         "pair each image with its own label map")
    if lab.size and int(lab.max()) > lab.size:
        # ids are arbitrary; sparse huge ids (2**40) would size per-id tables by the id, so
        # renumber them 1..N in increasing order (0 stays background)
        values, inverse = np.unique(lab, return_inverse=True)
        offset = 0 if values[0] == 0 else 1
        lab = (inverse.reshape(lab.shape) + offset).astype(np.int64)
    return lab


def build_semantic_dataset(ds: InstanceDataset, out_dir: str | Path, boundary_width: int = 2,
                           mask_threshold: float | None = None) -> SegDataset:
    """Write 3-class targets (and grey images for DSB) and return the semantic dataset.

    Args:
        ds: The instance dataset.
        out_dir: A folder for the converted files (``images/`` and ``targets/``); the user's
            data is never written to.
        boundary_width: See :func:`medseg.instance.instance_to_semantic`.
        mask_threshold: See :func:`read_dsb_masks`.

    Returns:
        A :class:`SegDataset` with labels ``background 0, interior 1, boundary 2``; DSB cases
        point at the converted grey images, label-map cases at the original images.

    Raises:
        InputError: the first bad file, named.
    """
    out = Path(out_dir)
    if not ds.cases:
        raise InputError("the instance dataset has no cases", ds.root, "check the folder")
    cases: list[SegCase] = []
    dims: set[int] = set()
    for c in ds.cases:
        if ds.layout == "dsb2018":
            img, meta = read_instance_image(c, grey=True)
            lab = read_instance_map(c, meta.spatial_shape, mask_threshold)
            img_path = write_image(out / "images" / f"{c.case_id}.tif", img, meta,
                                   dtype=np.float32)
        else:
            img_meta = read_image(c.image)[1]
            lab = read_instance_map(c, img_meta.spatial_shape, mask_threshold)
            meta, img_path = img_meta, c.image
        target = instance_to_semantic(lab, boundary_width)
        nd = sum(1 for s in meta.spatial_shape if s > 1)
        dims.add(2 if nd <= 2 else 3)
        ext = ".png" if target.ndim == 2 else ".nii.gz"
        if target.ndim == 3 and file_suffix(c.image) in (".tif", ".tiff"):
            ext = ".tif"
        tmeta = ImageMeta(meta.affine, meta.spatial_shape, source=(), dtype="uint8")
        tpath = write_label(out / "targets" / f"{c.case_id}{ext}", target, tmeta)
        cases.append(SegCase(c.case_id, [img_path], tpath))
    if len(dims) > 1:
        raise InputError("the dataset mixes 2D and 3D images", ds.root, "use one kind")
    ending = file_suffix(cases[0].images[0]) or ".png"
    modality = "PNG" if ds.layout == "dsb2018" else "other"
    return SegDataset(root=out, cases=cases, labels=dict(TARGET_LABELS), channel_names=[modality],
                      modalities=[modality],
                      file_ending=ending, spatial_dims=dims.pop(), name=ds.root.name)

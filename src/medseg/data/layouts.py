"""Segmentation dataset layouts (E2): MSD / nnU-Net ``dataset.json`` folders and image+mask folders.

Three entry points, all returning a :class:`SegDataset` (a list of cases plus the label table):

* :func:`load_msd_folder` — a folder with ``dataset.json`` + ``imagesTr/`` + ``labelsTr/``
  (+ optional ``imagesTs/``, ``labelsTs/``), in either of the two common dialects:

  - Medical Segmentation Decathlon: ``"training": [{"image": "./imagesTr/x.nii.gz", "label":
    "./labelsTr/x.nii.gz"}]``, ``"test": ["./imagesTs/y.nii.gz"]``, ``"modality": {"0": "CT"}``,
    ``"labels": {"0": "background", "1": "liver"}`` (value -> name);
  - nnU-Net v2: ``"channel_names": {"0": "CT"}``, ``"labels": {"background": 0, "liver": 1}``
    (name -> value), ``"file_ending": ".nii.gz"``, files ``imagesTr/{case}_{NNNN}{ending}`` one per
    channel and ``labelsTr/{case}{ending}``; an ``"ignore"`` label name, or an ``"ignore_label"``
    key, marks the unlabelled value (T5: sparse annotation, not background). An explicit
    ``"dataset"`` table ``{case: {"images": [...], "label": ...}}`` is honoured too.

* :func:`load_image_mask_folders` — 2D images (PNG/TIFF/JPEG) in one folder and masks in another,
  paired by name (``000_HC.png`` <-> ``000_HC_Annotation.png`` with ``mask_suffix="_Annotation"``).
* :func:`open_dataset` — picks one of the two from what the folder holds.

Nothing here reads pixels: missing files, unpaired images and malformed tables are reported at
once; the pixel-level checks live in :mod:`medseg.data.validate`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io.files import file_suffix
from medseg.io.paths import path_exists, read_json_object, resolve_listed_path

#: Channel names (lower case) that mean magnetic resonance in nnU-Net / MSD tables.
_MR_NAMES = {
    "mr", "mri", "t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "t2*", "t2s", "flair", "adc",
    "dwi", "pd", "pdw", "swi", "hbv", "nonenhanced", "t1-weighted", "t2-weighted", "cine", "dce",
}
_CT_NAMES = {"ct", "cect", "ncct", "cta", "ct angiography"}
_US_NAMES = {"us", "ultrasound", "b-mode", "bmode", "echo"}
_XR_NAMES = {"xr", "x-ray", "xray", "cr", "dx", "mg", "mammography", "radiograph"}
_PNG_NAMES = {"png", "rgb", "r", "g", "b", "red", "green", "blue", "photo", "microscopy"}


def modality_of_channel(name: str) -> str:
    """Map a ``dataset.json`` channel / modality name to ``"CT"``, ``"MR"``, ``"US"``, ``"XR"``,
    ``"PNG"`` or ``"other"``.

    Only the modality matters downstream (it chooses normalisation and noise models, P4);
    nnU-Net's special channel names ``"noNorm"`` and ``"rescale_to_0_1"`` map to ``"other"`` and
    are honoured by :func:`medseg.data.preprocess.make_plan` through the channel name.
    """
    n = name.strip().lower()
    if n in _CT_NAMES or n.startswith("ct"):
        return "CT"
    if n in _MR_NAMES or n.startswith(("mr", "t1", "t2")):
        return "MR"
    if n in _US_NAMES or "ultrasound" in n:
        return "US"
    if n in _XR_NAMES:
        return "XR"
    if n in _PNG_NAMES:
        return "PNG"
    return "other"


@dataclass
class SegCase:
    """One segmentation case.

    Attributes:
        case_id: Identifier (file stem without channel index), e.g. ``"liver_003"``.
        images: One file per channel, or a single multi-channel file (MSD 4D NIfTI).
        label: The label map file, or ``None`` for unlabelled (test) cases.
    """

    case_id: str
    images: list[Path]
    label: Path | None = None


@dataclass
class SegDataset:
    """A segmentation dataset: cases, label table and channel description.

    Attributes:
        root: The dataset folder (where ``dataset.json`` lives, or the images folder).
        cases: Labelled training cases.
        test_cases: Held-out cases (``imagesTs``); their ``label`` is set when ``labelsTs`` exists.
        labels: Label name -> integer value, background included (``{"background": 0, ...}``).
        channel_names: One name per input channel, in channel order.
        modalities: One of ``"CT"``, ``"MR"``, ``"US"``, ``"XR"``, ``"PNG"``, ``"other"`` per
            channel.
        ignore_label: The value that marks unlabelled voxels (T5), or ``None``.
        file_ending: ``".nii.gz"``, ``".png"`` ...
        spatial_dims: 2 or 3 when the layout says so (image+mask folders are 2), else ``None``
            (decided by :func:`medseg.data.validate.validate_dataset` from the pixels).
        name: Dataset name.
    """

    root: Path
    cases: list[SegCase]
    test_cases: list[SegCase] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0, "foreground": 1})
    channel_names: list[str] = field(default_factory=lambda: ["0"])
    modalities: list[str] = field(default_factory=lambda: ["other"])
    ignore_label: int | None = None
    file_ending: str = ".nii.gz"
    spatial_dims: int | None = None
    name: str = "dataset"

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if len(self.modalities) != len(self.channel_names):
            raise ValueError(
                f"{len(self.channel_names)} channel names but {len(self.modalities)} modalities"
            )
        table = self.root / "dataset.json"
        _check_label_table(self.labels, self.ignore_label, table if table.exists() else self.root)

    @property
    def num_classes(self) -> int:
        """Number of classes K the network predicts: every label value except the ignore label.

        The values are checked to be exactly ``0 .. K-1`` when the dataset is built.
        """
        return sum(1 for v in self.labels.values() if v != self.ignore_label)

    @property
    def foreground_labels(self) -> list[int]:
        """Sorted label values other than background (0) and the ignore label."""
        return sorted(v for v in self.labels.values() if v != 0 and v != self.ignore_label)

    @property
    def label_names(self) -> dict[int, str]:
        """Value -> name (the ignore label included)."""
        return {v: k for k, v in self.labels.items()}

    @property
    def allowed_label_values(self) -> set[int]:
        """Every value a label file may hold: the classes plus the ignore label."""
        return set(self.labels.values())


def _check_label_table(labels: dict[str, int], ignore_label: int | None, where: Path) -> None:
    """Class values must be exactly 0..K-1 (the ignore label may lie outside)."""
    values = [v for v in labels.values() if v != ignore_label]
    if not values:
        raise InputError("the label table is empty", where, 'declare at least {"background": 0}')
    if sorted(values) != list(range(len(values))):
        raise InputError(
            f"label values must be the contiguous integers 0..K-1 (background 0), got "
            f"{sorted(values)} in {labels}",
            where,
            "renumber the labels (and the label files) so the classes are 0, 1, ..., K-1; an "
            "unlabelled value can be declared as the ignore label instead",
        )
    if len(set(labels.values())) != len(labels):
        raise InputError(f"two label names share one value in {labels}", where, "give each its own")


def strip_ending(name: str, ending: str | None = None) -> str:
    """``name`` without its file ending (``ending`` when given and present, else a known image
    suffix such as ``.nii.gz``, else the last ``.suffix``): the case name of a file."""
    if ending and name.lower().endswith(ending.lower()):
        return name[: -len(ending)]
    suffix = file_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def read_dataset_json(path: str | Path) -> dict[str, Any]:
    """Read a ``dataset.json`` as a JSON object, refusing what the JSON standard does not allow.

    Args:
        path: The file.

    Returns:
        The parsed object.

    Raises:
        InputError: see :func:`medseg.io.paths.read_json_object` (missing, not a regular file,
            over 64 MiB, not UTF-8, invalid JSON or ``NaN``/``Infinity``, too deep, not an object).
    """
    path = Path(path)
    if not path_exists(path):
        raise InputError(
            "dataset.json not found",
            path,
            "a dataset folder needs a dataset.json (MSD or nnU-Net v2 style); for a folder of "
            "images with a folder of masks use load_image_mask_folders / open_dataset(images=..., "
            "masks=...)",
        )
    return read_json_object(
        path, 'see the MSD/nnU-Net format: {"labels": ..., "channel_names": ...}')


def load_label_table(path: str | Path) -> tuple[dict[str, int], int | None]:
    """The label table of a ``dataset.json`` (either dialect) and its ignore label.

    Args:
        path: The ``dataset.json``.

    Returns:
        ``(name -> value, ignore label or None)``.

    Raises:
        InputError: see :func:`read_dataset_json`; or a malformed ``labels`` table.
    """
    path = Path(path)
    labels, ignore = _parse_labels(read_dataset_json(path), path)
    _check_label_table(labels, ignore, path)
    return labels, ignore


def _int_key(k: str, path: Path, what: str) -> int:
    try:
        return int(k)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} key {k!r} is not an integer", path, "use '0', '1', ...") from e


def _parse_labels(data: dict[str, Any], path: Path) -> tuple[dict[str, int], int | None]:
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise InputError(
            "dataset.json has no 'labels' table",
            path,
            'add e.g. "labels": {"background": 0, "tumour": 1}',
        )
    labels: dict[str, int] = {}
    msd_style = all(isinstance(v, str) for v in raw.values())
    if msd_style:  # {"0": "background", "1": "liver"}
        for k, v in raw.items():
            labels[str(v)] = _int_key(k, path, "label")
    else:  # {"background": 0, "liver": 1}
        for k, v in raw.items():
            if isinstance(v, (list, tuple)):
                raise InputError(
                    f"label {k!r} is a region (a list of values {v}); region-based training is not "
                    "supported",
                    path,
                    "declare one integer value per label",
                )
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                    isinstance(v, float) and (not math.isfinite(v) or v != int(v))):
                raise InputError(f"label {k!r} has a non-integer value {v!r}", path, "use integers")
            labels[str(k)] = int(v)
    ignore: int | None = None
    if "ignore_label" in data and data["ignore_label"] is not None:
        v = data["ignore_label"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"ignore_label must be an integer, got {v!r}", path, "fix it")
        ignore = int(v)
        labels.setdefault("ignore", ignore)
    elif "ignore" in labels:
        ignore = labels["ignore"]
    if ignore is not None and labels.get("ignore", ignore) != ignore:
        raise InputError(
            f"'ignore_label' {ignore} disagrees with the label named 'ignore' ({labels['ignore']})",
            path,
            "keep one of them",
        )
    return labels, ignore


def _parse_channels(data: dict[str, Any], path: Path) -> list[str]:
    raw = data.get("channel_names", data.get("modality"))
    if raw is None:
        raise InputError(
            "dataset.json has neither 'channel_names' (nnU-Net v2) nor 'modality' (MSD)",
            path,
            'add e.g. "channel_names": {"0": "CT"}',
        )
    if not isinstance(raw, dict) or not raw:
        raise InputError("'channel_names' / 'modality' must be a non-empty object", path, None)
    idx = sorted((_int_key(k, path, "channel"), str(v)) for k, v in raw.items())
    if [i for i, _ in idx] != list(range(len(idx))):
        raise InputError(
            f"channel indices must be 0..C-1, got {[i for i, _ in idx]}", path, "renumber them"
        )
    return [v for _, v in idx]


def _require_files(files: list[Path], json_path: Path) -> None:
    missing = [p for p in files if not path_exists(p)]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(
            f"{len(missing)} file(s) listed in dataset.json do not exist: {shown}{more}",
            missing[0],
            f"restore the files or remove them from {json_path}",
        )


def _scan_v2(folder: Path, ending: str, n_channels: int, json_path: Path) -> dict[str, list[Path]]:
    """``{case: [channel files]}`` from ``{case}_{NNNN}{ending}`` names in ``folder``."""
    pat = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
    found: dict[str, dict[int, Path]] = {}
    stray: list[str] = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if not p.name.lower().endswith(ending.lower()):
            continue
        m = pat.match(p.name[: -len(ending)])
        if m is None:
            stray.append(p.name)
            continue
        found.setdefault(m["case"], {})[int(m["ch"])] = p
    if stray:
        raise InputError(
            f"{len(stray)} image file(s) are not named {{case}}_{{NNNN}}{ending} "
            f"(e.g. {stray[0]})",
            folder / stray[0],
            "nnU-Net v2 layout needs one file per channel: rename e.g. case_001" + ending
            + " to case_001_0000" + ending,
        )
    cases: dict[str, list[Path]] = {}
    for case, chans in found.items():
        want = list(range(n_channels))
        if sorted(chans) != want:
            missing = [f"{case}_{c:04d}{ending}" for c in want if c not in chans]
            extra = [f"{case}_{c:04d}{ending}" for c in chans if c not in want]
            raise InputError(
                f"case {case!r} should have {n_channels} channel file(s) "
                f"(channel_names in dataset.json); missing {missing}, unexpected {extra}",
                folder / f"{case}_0000{ending}",
                f"add the missing channel files or fix channel_names in {json_path}",
            )
        cases[case] = [chans[c] for c in want]
    return cases


def load_msd_folder(root: str | Path, allow_outside_root: bool = False) -> SegDataset:
    """Read an MSD or nnU-Net v2 dataset folder (see the module docstring for both dialects).

    Args:
        root: Folder holding ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and optionally
            ``imagesTs/`` (+ ``labelsTs/``).
        allow_outside_root: Accept paths in ``dataset.json`` that are absolute, contain ``..`` or
            resolve (through symbolic links) outside ``root``; refused by default.

    Returns:
        The dataset with every listed file checked to exist.

    Raises:
        InputError: folder or ``dataset.json`` missing, invalid JSON, malformed label or channel
            table, malformed or escaping entries, files listed but absent, images without labels,
            no training cases.
    """
    root = Path(root)
    if not path_exists(root) or not root.is_dir():
        raise InputError("dataset folder not found", root, "check the path")
    json_path = root / "dataset.json"
    data = read_dataset_json(json_path)
    labels, ignore = _parse_labels(data, json_path)
    channel_names = _parse_channels(data, json_path)
    modalities = [modality_of_channel(c) for c in channel_names]
    name = str(data.get("name", root.name))
    is_msd = isinstance(data.get("training"), list)
    file_ending = data.get("file_ending", ".nii.gz")
    if not isinstance(file_ending, str) or not file_ending.startswith(".") or len(file_ending) < 2:
        raise InputError(f"'file_ending' must be a file ending such as '.nii.gz', got "
                         f"{file_ending!r}", json_path, 'write e.g. "file_ending": ".nii.gz"')
    cases: list[SegCase] = []
    test_cases: list[SegCase] = []

    def listed(entry: object, what: str) -> Path:
        return resolve_listed_path(root, entry, what, json_path, allow_outside_root)

    if isinstance(data.get("dataset"), dict):  # nnU-Net v2 explicit table
        for cid, entry in sorted(data["dataset"].items()):
            if not isinstance(entry, dict) or "images" not in entry:
                raise InputError(f"dataset entry {cid!r} needs 'images'", json_path,
                                 'write {"images": ["imagesTr/case_0000.nii.gz"], "label": ...}')
            images = entry["images"]
            if isinstance(images, str):
                images = [images]
            if not isinstance(images, list) or not images:
                raise InputError(f"dataset entry {cid!r}: 'images' must be a list of file paths, "
                                 f"got {images!r}"[:300], json_path,
                                 "list one file per channel")
            imgs = [listed(p, f"dataset[{cid!r}].images[{i}]") for i, p in enumerate(images)]
            lab = entry.get("label")
            if lab is None:
                raise InputError(
                    f"case {cid!r} has no 'label'", json_path, "add the label file for every case"
                )
            cases.append(SegCase(str(cid), imgs, listed(lab, f"dataset[{cid!r}].label")))
    elif is_msd:
        for i, entry in enumerate(data["training"]):
            if not isinstance(entry, dict) or "image" not in entry:
                raise InputError(
                    f"'training' entry {i} needs an 'image' key", json_path, "see the MSD format"
                )
            img = listed(entry["image"], f"training[{i}].image")
            if not entry.get("label"):
                raise InputError(
                    f"training image {img.name} has no label", json_path,
                    "every training entry needs 'label'",
                )
            ending = file_suffix(img.name) or img.suffix
            cases.append(
                SegCase(strip_ending(img.name, ending), [img],
                        listed(entry["label"], f"training[{i}].label"))
            )
            file_ending = ending or file_ending
        tests = data.get("test", []) or []
        if not isinstance(tests, list):
            raise InputError(f"'test' must be a list of image paths, got {tests!r}"[:300],
                             json_path, 'write "test": ["./imagesTs/case.nii.gz", ...] or omit it')
        for i, rel in enumerate(tests):
            if isinstance(rel, dict):
                if "image" not in rel:
                    raise InputError(f"'test' entry {i} needs an 'image' key", json_path,
                                     'write {"image": "./imagesTs/case.nii.gz"} or the path alone')
                rel = rel["image"]
            img = listed(rel, f"test[{i}]")
            test_cases.append(SegCase(strip_ending(img.name), [img], None))
    else:  # nnU-Net v2 folder scan
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        for d in (images_dir, labels_dir):
            if not d.is_dir():
                raise InputError(
                    f"folder {d.name}/ not found", d, "nnU-Net layout needs imagesTr/ and labelsTr/"
                )
        scanned = _scan_v2(images_dir, file_ending, len(channel_names), json_path)
        for cid, imgs in scanned.items():
            cases.append(SegCase(cid, imgs, labels_dir / f"{cid}{file_ending}"))
        no_label = [c for c in cases if c.label is not None and not c.label.exists()]
        if no_label:
            names = ", ".join(c.images[0].name for c in no_label[:5])
            raise InputError(
                f"{len(no_label)} image(s) in imagesTr have no label file in labelsTr ({names})",
                no_label[0].label,
                f"add labelsTr/{no_label[0].case_id}{file_ending} or remove the images",
            )
        label_cases = {strip_ending(p.name, file_ending) for p in labels_dir.iterdir()
                       if p.name.lower().endswith(file_ending.lower())
                       and not p.name.startswith(".")}
        orphans = sorted(label_cases - set(scanned))
        if orphans:
            raise InputError(
                f"label file(s) without images: {orphans[:5]}",
                labels_dir / f"{orphans[0]}{file_ending}",
                f"add imagesTr/{orphans[0]}_0000{file_ending} or remove the label",
            )
        ts = root / "imagesTs"
        if ts.is_dir():
            lts = root / "labelsTs"
            for cid, imgs in _scan_v2(ts, file_ending, len(channel_names), json_path).items():
                lab = lts / f"{cid}{file_ending}"
                test_cases.append(SegCase(cid, imgs, lab if lab.exists() else None))

    if not cases:
        raise InputError(
            "the dataset has no training cases",
            root / "imagesTr",
            f"put images named case_0000{file_ending} in imagesTr/ and labels in labelsTr/",
        )
    _require_files([p for c in cases for p in c.images] + [c.label for c in cases if c.label],
                   json_path)
    _require_files([p for c in test_cases for p in c.images], json_path)
    n_declared = data.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(cases):
        raise InputError(
            f"numTraining is {n_declared} but {len(cases)} training cases were found",
            json_path,
            "fix numTraining or add the missing cases",
        )
    tensor_size = str(data.get("tensorImageSize", "")).upper()
    spatial_dims = 2 if file_ending.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg") else None
    if tensor_size == "3D" and spatial_dims is None:
        spatial_dims = 3
    return SegDataset(
        root=root,
        cases=cases,
        test_cases=test_cases,
        labels=labels,
        channel_names=channel_names,
        modalities=modalities,
        ignore_label=ignore,
        file_ending=file_ending,
        spatial_dims=spatial_dims,
        name=name,
    )


_MASK_LIKE_SUFFIXES = ("_Annotation", "_annotation", "_mask", "_Mask", "_seg", "_label", "_gt")


def load_image_mask_folders(
    images_dir: str | Path,
    masks_dir: str | Path,
    mask_suffix: str = "",
    labels: dict[str, int] | None = None,
    modality: str = "PNG",
    ignore_label: int | None = None,
) -> SegDataset:
    """Pair 2D images with masks by name.

    An image ``{stem}{ext}`` is paired with the mask ``{stem}{mask_suffix}{ext2}`` in
    ``masks_dir`` (any supported image ending). Masks without an image are left out.

    Args:
        images_dir: Folder of PNG / TIFF / JPEG images.
        masks_dir: Folder of integer masks.
        mask_suffix: Text the mask names add to the image stem, e.g. ``"_Annotation"``.
        labels: Label name -> value; default ``{"background": 0, "foreground": 1}``.
        modality: Modality of every image (``"US"``, ``"XR"``, ``"PNG"`` ...).
        ignore_label: Value marking unlabelled pixels, if any.

    Returns:
        A 2D dataset (``spatial_dims=2``) with one channel named after ``modality``.

    Raises:
        InputError: a folder missing or empty, or images without a mask.
    """
    from medseg.io import list_image_files

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise InputError(f"{what} folder not found", d, "check the path")
    imgs = [p for p in list_image_files(images_dir) if isinstance(p, Path) and p.is_file()]
    masks = [p for p in list_image_files(masks_dir) if isinstance(p, Path) and p.is_file()]
    if not imgs:
        raise InputError("no PNG/TIFF/JPEG images in the folder", images_dir, "check the path")
    if not masks:
        raise InputError("no mask images in the folder", masks_dir, "check the path")
    by_stem: dict[str, Path] = {}
    for m in masks:
        by_stem.setdefault(strip_ending(m.name), m)
    cases: list[SegCase] = []
    unpaired: list[Path] = []
    for img in imgs:
        stem = strip_ending(img.name)
        m = by_stem.get(stem + mask_suffix)
        if m is None:
            unpaired.append(img)
        else:
            cases.append(SegCase(stem, [img], m))
    if unpaired:
        hint = f"add masks named like {strip_ending(unpaired[0].name)}{mask_suffix}.png"
        for s in _MASK_LIKE_SUFFIXES:
            if s != mask_suffix and strip_ending(unpaired[0].name) + s in by_stem:
                hint = f"the masks seem to be named with a suffix: pass mask_suffix={s!r}"
                break
        raise InputError(
            f"{len(unpaired)} of {len(imgs)} image(s) have no mask in {masks_dir} "
            f"(e.g. {', '.join(p.name for p in unpaired[:3])})",
            unpaired[0],
            hint,
        )
    table = dict(labels) if labels is not None else {"background": 0, "foreground": 1}
    if ignore_label is not None:
        table.setdefault("ignore", ignore_label)
    return SegDataset(
        root=images_dir,
        cases=cases,
        test_cases=[],
        labels=table,
        channel_names=[modality],
        modalities=[modality_of_channel(modality)],
        ignore_label=ignore_label,
        file_ending=file_suffix(imgs[0].name) or imgs[0].suffix,
        spatial_dims=2,
        name=images_dir.parent.name or images_dir.name,
    )


_MASK_FOLDER_NAMES = ("masks", "labels", "annotations", "masks_filled", "segmentations")


def open_dataset(path: str | Path, allow_outside_root: bool = False, **kw: Any) -> SegDataset:
    """Open a dataset folder, detecting its layout.

    * ``path/dataset.json`` exists -> :func:`load_msd_folder` (with ``allow_outside_root``; no
      other keyword arguments accepted);
    * ``path/images/`` plus one of ``masks/``, ``labels/``, ``annotations/``, ``segmentations/``
      -> :func:`load_image_mask_folders` with ``kw`` (``mask_suffix``, ``labels``, ``modality``,
      ``ignore_label``); pass ``masks_dir=`` to choose the mask folder explicitly.

    Args:
        path: The dataset folder.
        allow_outside_root: Accept ``dataset.json`` paths outside the folder (see
            :func:`load_msd_folder`).
        **kw: Options of :func:`load_image_mask_folders`.

    Raises:
        InputError: missing folder or unrecognised layout.
        TypeError: unknown keyword arguments.
    """
    root = Path(path)
    if not path_exists(root):
        raise InputError("dataset folder not found", root, "check the path")
    if not root.is_dir():
        raise InputError("a dataset is a folder, not a file", root, "pass the dataset folder")
    if (root / "dataset.json").exists():
        if kw:
            raise TypeError(f"load_msd_folder takes no options, got {sorted(kw)}")
        return load_msd_folder(root, allow_outside_root=allow_outside_root)
    masks_dir = kw.pop("masks_dir", None)
    if (root / "images").is_dir():
        if masks_dir is None:
            for n in _MASK_FOLDER_NAMES:
                if (root / n).is_dir():
                    masks_dir = root / n
                    break
        if masks_dir is not None:
            return load_image_mask_folders(root / "images", masks_dir, **kw)
    if not any(root.iterdir()):
        raise InputError("the dataset folder is empty", root, "check the path")
    raise InputError(
        "unrecognised dataset layout",
        root,
        "use an MSD/nnU-Net folder (dataset.json, imagesTr/, labelsTr/) or a folder with images/ "
        "and masks/ (same file names, optionally with a mask suffix)",
    )

"""Classification datasets (T1, T2, T5): CSV label tables and MedMNIST-style ``.npz`` files.

Two layouts, both returning a :class:`ClsDataset` (items, task, class names, modality):

* :func:`load_classification_csv` — a CSV beside a folder of images (PNG/TIFF/JPEG) or volumes
  (NIfTI, NRRD, DICOM folders): anything :func:`medseg.io.read_image` reads. The header names the
  columns; ``image`` is required, ``id`` and ``split`` are optional, every other column is a
  label:

  - single-label (T1): one ``label`` column holding a class name or a class index, e.g.
    ``image,label`` / ``a.png,benign``. Class names are the ones declared, else the sorted
    distinct names in the table, else (integer labels) ``"0" .. str(max)``;
  - multi-label (T2): one column per label, ``image,effusion,nodule`` / ``a.png,1,-1`` with
    values ``0``, ``1`` or ``-1``. ``-1`` (:data:`MISSING`) means *not annotated*: missing data,
    excluded from the loss and the metrics (T5), never a negative.

  An ``image`` cell holds a path relative to ``image_dir`` (default: the CSV's folder), or
  several paths separated by ``;`` for the channels of one case.
* :func:`load_medmnist_npz` — the MedMNIST layout: ``train_images``, ``train_labels`` and optional
  ``val_*``/``test_*`` arrays; labels ``(N,)`` or ``(N, 1)`` (single-label) or ``(N, C)``
  (multi-label).

:func:`open_classification` picks one of the two from a path. :func:`load_images` reads the
pixels. Every problem in a table (unknown class, missing file, duplicate id, wrong row width,
values other than 0/1/-1, a label column with no annotation at all, an empty table) is an
:class:`~medseg.errors.InputError` naming the file and row, raised at load time, before training.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.files import file_suffix
from medseg.io.image import check_finite, read_image
from medseg.io.limits import check_declared_size, check_regular_file, reader_failure
from medseg.io.paths import path_exists, resolve_listed_path

#: Marker of a missing (not annotated) entry in a multi-label vector (T5).
MISSING = -1

TASKS = ("single", "multi")
_RESERVED = ("id", "image", "split")
_MULTI_VALUES = {"0": 0, "1": 1, "-1": -1, "0.0": 0, "1.0": 1, "-1.0": -1}
_NPZ_SPLITS = ("train", "val", "test")
#: Most classes a table may imply (integer class indices run 0..K-1).
MAX_CLASSES = 100_000
_INDEX = re.compile(r"-?[0-9]{1,18}")


@dataclass
class ClsItem:
    """One classification case.

    Attributes:
        item_id: Unique identifier.
        label: Single-label: a 0-d int64 array, the class index. Multi-label: ``(C,)`` int8 with
            values 0, 1 or :data:`MISSING` (-1).
        images: Image file(s) of the case, one per channel or one multi-channel file; empty for
            cases held in an ``.npz`` array.
        split: ``"train"``, ``"val"``, ``"test"`` or ``""`` (not stated).
        index: Row of the case in the ``.npz`` array of its split (-1 for file cases).
    """

    item_id: str
    label: np.ndarray
    images: list[Path] = field(default_factory=list)
    split: str = ""
    index: int = -1


@dataclass
class ClsDataset:
    """A classification dataset: cases, task and class names.

    Attributes:
        items: The cases, in table order.
        task: ``"single"`` (T1, one class per case) or ``"multi"`` (T2, C binary labels).
        class_names: Class names (single-label) or label names (multi-label), index order.
        modality: ``"CT"``, ``"MR"``, ``"US"``, ``"XR"``, ``"PNG"`` or ``"other"``.
        source: The CSV or ``.npz`` file the dataset came from.
        arrays: For ``.npz`` datasets, the raw image arrays per split as stored
            (``(N, H, W)``, ``(N, H, W, 3)`` or ``(N, D, H, W)``); empty for file datasets.
    """

    items: list[ClsItem]
    task: str
    class_names: list[str]
    modality: str = "other"
    source: Path | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        """Number of classes (single-label) or labels (multi-label)."""
        return len(self.class_names)

    @property
    def ids(self) -> list[str]:
        """Case identifiers in order."""
        return [it.item_id for it in self.items]

    def labels(self) -> np.ndarray:
        """All labels: ``(N,)`` int64 class indices, or ``(N, C)`` int8 in {0, 1, -1}."""
        if self.task == "single":
            return np.array([int(it.label) for it in self.items], dtype=np.int64)
        if not self.items:
            return np.zeros((0, self.num_classes), dtype=np.int8)
        return np.stack([it.label for it in self.items]).astype(np.int8)

    def observed(self) -> np.ndarray:
        """Observation mask (T5): ``(N,)`` all True (single-label) or ``(N, C)`` ``label != -1``."""
        lab = self.labels()
        return lab != MISSING if self.task == "multi" else np.ones(len(lab), dtype=bool)

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per class: ``{"positive", "negative", "missing"}`` case counts (one-vs-rest)."""
        lab = self.labels()
        out = {}
        for c, name in enumerate(self.class_names):
            col = (lab == c).astype(np.int8) if self.task == "single" else lab[:, c]
            out[name] = {
                "positive": int(np.sum(col == 1)),
                "negative": int(np.sum(col == 0)),
                "missing": int(np.sum(col == MISSING)),
            }
        return out

    def splits(self) -> list[str]:
        """The distinct split names, in order of appearance."""
        return list(dict.fromkeys(it.split for it in self.items))

    def subset(self, split: str | None = None, indices: Sequence[int] | None = None) -> ClsDataset:
        """The cases of one split and/or at the given positions (same classes and arrays)."""
        items = self.items if indices is None else [self.items[i] for i in indices]
        if split is not None:
            items = [it for it in items if it.split == split]
        return replace(self, items=list(items))


# --------------------------------------------------------------------------------------- CSV


def _row_error(csv_path: Path, line: int, problem: str, hint: str) -> InputError:
    return InputError(f"row at line {line}: {problem}", csv_path, hint)


def _parse_single(
    raw: list[tuple[int, str]], csv_path: Path, class_names: Sequence[str] | None
) -> tuple[list[str], list[int]]:
    """Class names and class indices of single-label cells ``[(line, text)]``."""
    values = [v for _, v in raw]
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise InputError(f"class names {names} contain duplicates", csv_path,
                             "declare each class once")
        index = {n: i for i, n in enumerate(names)}
        out = []
        for line, v in raw:
            if v in index:
                out.append(index[v])
            elif _INDEX.fullmatch(v) and 0 <= int(v) < len(names):
                out.append(int(v))
            else:
                raise _row_error(
                    csv_path, line, f"label {v!r} is not one of the declared classes {names}",
                    f"use a class name or an index 0..{len(names) - 1}, or declare the class",
                )
        return names, out
    for line, v in raw:
        if v == "":
            raise _row_error(csv_path, line, "empty label", "every row needs a class label")
    if all(_INDEX.fullmatch(v) for v in values):
        ints = [int(v) for v in values]
        for (line, v), i in zip(raw, ints, strict=True):
            if i < 0:
                raise _row_error(csv_path, line, f"negative class index {v}",
                                 "class indices start at 0")
            if i >= MAX_CLASSES:
                raise _row_error(
                    csv_path, line, f"class index {v} implies more than {MAX_CLASSES} classes",
                    "number the classes 0..K-1, or write class names instead of indices",
                )
        return [str(i) for i in range(max(ints) + 1)], ints
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return names, [index[v] for v in values]


def read_csv_rows(
    path: Path, what: str = "CSV file"
) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """The header and the non-blank rows ``(line, stripped cells)`` of a UTF-8 CSV file.

    Args:
        path: The file (a BOM is skipped).
        what: What the file is, for messages.

    Returns:
        ``(header or None, rows)``; blank lines before the header and between rows are skipped.

    Raises:
        InputError: not UTF-8 text, a NUL byte, a field longer than the ``csv`` module's limit
            (``csv.field_size_limit()``), or an unreadable file.
    """
    rows: list[tuple[int, list[str]]] = []
    header = None
    line = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            while header is not None and not any(h.strip() for h in header):
                header = next(reader, None)
            for row in reader:
                line = reader.line_num
                if any(c.strip() for c in row):
                    rows.append((reader.line_num, [c.strip() for c in row]))
    except UnicodeDecodeError as e:
        raise InputError(
            f"{what} is not UTF-8 text (byte 0x{e.object[e.start]:02x} after line {line} "
            "cannot be decoded)",
            path,
            "save the table as UTF-8 (e.g. in a spreadsheet: 'CSV UTF-8')",
        ) from None
    except csv.Error as e:
        problem = str(e)
        if "field larger than field limit" in problem:
            problem = (f"a field after line {line} is longer than the CSV module's limit of "
                       f"{csv.field_size_limit()} characters")
        raise InputError(
            f"{what} is not a readable CSV table ({problem})",
            path,
            "check that it is a comma-separated text table (not a binary file) and that every "
            "quote is closed",
        ) from None
    except OSError as e:
        raise InputError(f"cannot read the {what} ({e})", path, "check the file") from None
    return header, rows


def load_classification_csv(
    csv_path: str | Path,
    image_dir: str | Path | None = None,
    task: str = "auto",
    class_names: Sequence[str] | None = None,
    modality: str = "other",
    check_files: bool = True,
    allow_outside_root: bool = False,
) -> ClsDataset:
    """Read a classification label table and check it (see the module docstring for the format).

    Args:
        csv_path: The CSV file, with a header row.
        image_dir: Folder the ``image`` paths are relative to (default: the CSV's folder).
        task: ``"single"``, ``"multi"`` or ``"auto"`` (single when the only label column is named
            ``label``, else multi).
        class_names: Declared classes (single-label: labels outside them are errors) or label
            columns in the wanted order (multi-label: must be exactly the table's label columns).
        modality: Imaging modality recorded on the dataset.
        check_files: Check that every image file exists.
        allow_outside_root: Accept image paths that are absolute, contain ``..`` or resolve
            (through symbolic links) outside ``image_dir``; refused by default.

    Returns:
        The dataset.

    Raises:
        InputError: the table is empty, malformed, not UTF-8, has a field over the CSV module's
            limit, or lists a path outside ``image_dir``; see the module docstring.
    """
    csv_path = Path(csv_path)
    if task not in (*TASKS, "auto"):
        raise ValueError(f"task must be 'single', 'multi' or 'auto', got {task!r}")
    if not path_exists(csv_path):
        raise InputError("label table not found", csv_path, "check the path of the CSV file")
    check_regular_file(csv_path)
    root = csv_path.parent if image_dir is None else Path(image_dir)
    header, rows = read_csv_rows(csv_path, "label table")
    if header is None or not rows:
        raise InputError(
            "empty label table (no header or no data rows)", csv_path,
            "write a header such as 'image,label' and one row per case",
        )
    header = [h.strip() for h in header]
    cols = [h.lower() if h.lower() in _RESERVED else h for h in header]
    if "image" not in cols:
        raise InputError(f"no 'image' column in header {header}", csv_path,
                         "name the column holding the image paths 'image'")
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if dup or "" in cols:
        raise InputError(f"header {header} has duplicate or empty column names {dup}", csv_path,
                         "give every column a distinct, non-empty name")
    label_cols = [c for c in cols if c not in _RESERVED]
    if not label_cols:
        raise InputError(f"no label column in header {header}", csv_path,
                         "add a 'label' column (single-label) or one column per label")
    if task == "auto":
        task = "single" if label_cols == ["label"] else "multi"
    if task == "single" and len(label_cols) != 1:
        raise InputError(
            f"single-label table needs exactly one label column, found {label_cols}", csv_path,
            "keep one 'label' column, or load it with task='multi'",
        )
    width = len(cols)
    for line, row in rows:
        if len(row) != width:
            raise _row_error(
                csv_path, line,
                f"{len(row)} values but the header has {width} columns {header}",
                "give every row one value per column (write -1 for a missing multi-label entry)",
            )
    at = {c: i for i, c in enumerate(cols)}
    # ids and files
    ids, images, splits = [], [], []
    seen: dict[str, int] = {}
    for line, row in rows:
        cell = row[at["image"]]
        if not cell:
            raise _row_error(csv_path, line, "empty image path", "name the case's image file")
        parts = [p.strip() for p in cell.split(";") if p.strip()]
        if not parts:
            raise _row_error(csv_path, line, "empty image path", "name the case's image file")
        for p in parts:
            resolve_listed_path(root, p, f"row at line {line}: image", csv_path,
                                allow_outside_root)
        paths = [root / p for p in parts]
        if check_files:
            for p in paths:
                if not path_exists(p):
                    raise _row_error(
                        csv_path, line, f"image file {p} does not exist",
                        f"fix the path (relative to {root}) or remove the row",
                    )
        case_id = row[at["id"]] if "id" in at else _stem(paths[0])
        if not case_id:
            raise _row_error(csv_path, line, "empty id", "give every case an id")
        if case_id in seen:
            raise _row_error(
                csv_path, line, f"duplicate id {case_id!r} (first at line {seen[case_id]})",
                "give every case a distinct id (add an 'id' column if file names repeat)",
            )
        seen[case_id] = line
        ids.append(case_id)
        images.append(paths)
        splits.append(row[at["split"]].lower() if "split" in at else "")
    if task == "single":
        raw = [(line, row[at[label_cols[0]]]) for line, row in rows]
        names, idx = _parse_single(raw, csv_path, class_names)
        labels = [np.asarray(i, dtype=np.int64) for i in idx]
    else:
        names = list(label_cols)
        if class_names is not None:
            if sorted(map(str, class_names)) != sorted(names):
                raise InputError(
                    f"declared labels {list(class_names)} differ from the table's label columns "
                    f"{names}", csv_path, "declare exactly the label columns of the table",
                )
            names = [str(n) for n in class_names]
        mat = np.empty((len(rows), len(names)), dtype=np.int8)
        for r, (line, row) in enumerate(rows):
            for c, name in enumerate(names):
                v = row[at[name]]
                if v not in _MULTI_VALUES:
                    raise _row_error(
                        csv_path, line, f"value {v!r} in column {name!r} is not 0, 1 or -1",
                        "write 1 (present), 0 (absent) or -1 (not annotated)",
                    )
                mat[r, c] = _MULTI_VALUES[v]
        _check_columns_observed(mat, names, csv_path)
        labels = list(mat)
    items = [
        ClsItem(item_id=i, label=lab, images=im, split=s)
        for i, lab, im, s in zip(ids, labels, images, splits, strict=True)
    ]
    return ClsDataset(items=items, task=task, class_names=names, modality=modality,
                      source=csv_path)


def _stem(path: Path) -> str:
    suffix = file_suffix(path)
    name = path.name
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else path.stem


def _check_columns_observed(mat: np.ndarray, names: Sequence[str], path: Path) -> None:
    empty = [n for c, n in enumerate(names) if not np.any(mat[:, c] != MISSING)]
    if empty:
        raise InputError(
            f"label column(s) {empty} are missing (-1) in every row", path,
            "annotate at least some cases for each label, or drop the column",
        )


# --------------------------------------------------------------------------------------- npz


def load_medmnist_npz(
    path: str | Path,
    task: str = "auto",
    class_names: Sequence[str] | None = None,
    modality: str = "other",
) -> ClsDataset:
    """Read a MedMNIST-style ``.npz`` (``{split}_images`` / ``{split}_labels``).

    Args:
        path: The ``.npz`` file with any of the splits ``train``, ``val``, ``test``, each as
            ``{split}_images`` and ``{split}_labels`` (e.g. a test split alone, to predict).
        task: ``"single"``, ``"multi"`` or ``"auto"`` (single for ``(N,)``/``(N, 1)`` labels,
            multi for ``(N, C)`` with ``C > 1``).
        class_names: Class / label names (default ``"0" .. "C-1"``).
        modality: Imaging modality recorded on the dataset.

    Returns:
        The dataset; item ids are ``"{split}_{index:05d}"``, the raw arrays are kept in
        :attr:`ClsDataset.arrays`.

    Raises:
        InputError: missing arrays, image/label count mismatch, labels out of range.
    """
    path = Path(path)
    if task not in (*TASKS, "auto"):
        raise ValueError(f"task must be 'single', 'multi' or 'auto', got {task!r}")
    if not path_exists(path):
        raise InputError("npz file not found", path, "check the path")
    data = _read_npz(path)
    if not any(f"{s}_images" in data or f"{s}_labels" in data for s in _NPZ_SPLITS):
        raise InputError(
            f"no split found: needs train_, val_ or test_images with its _labels (found "
            f"{sorted(data)})", path,
            "store arrays named {train,val,test}_images and {train,val,test}_labels",
        )
    present = []
    for key, arr in data.items():
        if arr.ndim == 0:
            raise InputError(f"array {key!r} is a scalar, not one entry per case", path,
                             "store images as (N, H, W, ...) and labels as (N,) or (N, C)")
    for s in _NPZ_SPLITS:
        has_i, has_l = f"{s}_images" in data, f"{s}_labels" in data
        if has_i != has_l:
            raise InputError(f"split {s!r} has only one of {s}_images / {s}_labels", path,
                             "store both arrays of every split")
        if has_i:
            n_i, n_l = len(data[f"{s}_images"]), len(data[f"{s}_labels"])
            if n_i != n_l:
                raise InputError(f"{s}_images has {n_i} cases but {s}_labels {n_l}", path,
                                 "store one label row per image")
            shape = data[f"{s}_images"].shape
            if len(shape) not in (3, 4, 5) or 0 in shape[1:]:
                raise InputError(
                    f"{s}_images has shape {shape}", path,
                    "store images as (N, H, W), (N, H, W, 3) or (N, D, H, W)",
                )
            present.append(s)
    shapes = {s: data[f"{s}_images"].shape for s in present}
    if len({sh[1:] for sh in shapes.values()}) > 1:
        shown = ", ".join(f"{s} {sh}" for s, sh in shapes.items())
        raise InputError(f"image shapes differ between splits: {shown}", path,
                         "store every split's images at one size")
    labels = {}
    widths = set()
    for s in present:
        lab = data[f"{s}_labels"]
        if lab.ndim == 1:
            lab = lab[:, None]
        if lab.ndim != 2:
            raise InputError(f"{s}_labels has shape {lab.shape}", path,
                             "store labels as (N,), (N, 1) or (N, C)")
        if lab.dtype.kind == "f" and not np.all(lab == np.round(lab)):
            raise InputError(f"{s}_labels holds non-integer values (or NaN)", path,
                             "store class indices or 0/1/-1")
        if lab.size and (lab.min() < -MAX_CLASSES or lab.max() >= MAX_CLASSES):
            raise InputError(
                f"{s}_labels holds values from {lab.min()} to {lab.max()}; class indices run "
                f"0..K-1 (K at most {MAX_CLASSES}), multi-label values are 0, 1 or -1",
                path, "store class indices or 0/1/-1",
            )
        labels[s] = lab.astype(np.int64)
        widths.add(lab.shape[1])
    if len(widths) != 1:
        raise InputError(f"label widths differ between splits: {sorted(widths)}", path,
                         "store the same labels in every split")
    width = widths.pop()
    if task == "auto":
        task = "single" if width == 1 else "multi"
    if task == "single" and width != 1:
        raise InputError(f"single-label task but labels have {width} columns", path,
                         "load it with task='multi'")
    allv = np.concatenate([labels[s] for s in present])
    if task == "single":
        if allv.min() < 0:
            raise InputError(f"negative class index {int(allv.min())}", path,
                             "class indices start at 0")
        n_cls = int(allv.max()) + 1 if class_names is None else len(class_names)
        if allv.max() >= n_cls:
            raise InputError(
                f"class index {int(allv.max())} outside the declared classes "
                f"{list(class_names or [])}", path, "declare every class",
            )
    else:
        bad = np.setdiff1d(np.unique(allv), [MISSING, 0, 1])
        if bad.size:
            raise InputError(f"multi-label values {bad.tolist()} are not 0, 1 or -1", path,
                             "store 1 (present), 0 (absent) or -1 (not annotated)")
        n_cls = width
        if class_names is not None and len(class_names) != width:
            raise InputError(f"{len(class_names)} label names declared but labels have "
                             f"{width} columns", path, "declare one name per label column")
    names = [str(n) for n in class_names] if class_names is not None else [
        str(i) for i in range(n_cls)
    ]
    if task == "multi":
        _check_columns_observed(allv, names, path)
    items = []
    for s in present:
        for i, row in enumerate(labels[s]):
            lab = np.asarray(row[0], dtype=np.int64) if task == "single" else row.astype(np.int8)
            items.append(ClsItem(item_id=f"{s}_{i:05d}", label=lab, split=s, index=i))
    arrays = {s: data[f"{s}_images"] for s in present}
    return ClsDataset(items=items, task=task, class_names=names, modality=modality,
                      source=path, arrays=arrays)


_NPZ_KEYS = tuple(f"{s}_{k}" for s in _NPZ_SPLITS for k in ("images", "labels"))
_NPZ_HINT = "re-export it with numpy.savez (arrays {train,val,test}_images / _labels)"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The image and label arrays of a MedMNIST ``.npz``, each checked before it is read.

    Every ``.npy`` member's header (shape, dtype) is read first: object arrays are refused
    (``allow_pickle=False``), and each array's declared size must be within
    :func:`medseg.io.limits.max_image_bytes`; only the arrays named ``{split}_images`` /
    ``{split}_labels`` are then loaded, with numeric dtypes.

    Raises:
        InputError: not a regular file, not a ZIP archive, a damaged member, an object or
            non-numeric array, or an array over the size limit.
    """
    check_regular_file(path)
    if not zipfile.is_zipfile(path):
        raise InputError("not an .npz archive (no ZIP structure)", path, _NPZ_HINT)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            for key, info in members.items():
                if key not in _NPZ_KEYS:
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(fh)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise InputError(
                        f"array {key!r} has dtype {dtype} (only numbers are read; Python objects "
                        "are never unpickled)",
                        path, _NPZ_HINT,
                    )
                if all(int(d) > 0 for d in shape):
                    check_declared_size(path, shape, dtype.itemsize, f"array {key!r}")
        with np.load(path, allow_pickle=False) as z:
            for key in members:
                if key in _NPZ_KEYS:
                    out[key] = np.asarray(z[key])
    except InputError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, ValueError, EOFError, OSError ...
        raise reader_failure(exc, path, "npz file", _NPZ_HINT) from exc
    return out


def open_classification(
    path: str | Path,
    task: str = "auto",
    class_names: Sequence[str] | None = None,
    modality: str = "other",
    allow_outside_root: bool = False,
) -> ClsDataset:
    """Open a classification dataset: an ``.npz`` file, a CSV, or a folder holding one CSV.

    Args:
        path: The ``.npz``, the CSV, or a folder holding one CSV.
        task: See :func:`load_classification_csv`.
        class_names: See :func:`load_classification_csv`.
        modality: Imaging modality recorded on the dataset.
        allow_outside_root: Accept CSV image paths outside the CSV's folder (see
            :func:`load_classification_csv`).

    Raises:
        InputError: the path is none of these, or a folder holds zero or several CSV files.
    """
    p = Path(path)
    if path_exists(p) and p.is_dir():
        tables = sorted(p.glob("*.csv"))
        if len(tables) != 1:
            raise InputError(
                f"expected one CSV label table in the folder, found {len(tables)}", p,
                "pass the CSV file itself",
            )
        p = tables[0]
    if p.suffix.lower() == ".npz":
        return load_medmnist_npz(p, task=task, class_names=class_names, modality=modality)
    if p.suffix.lower() == ".csv":
        return load_classification_csv(p, task=task, class_names=class_names, modality=modality,
                                       allow_outside_root=allow_outside_root)
    raise InputError("not a classification dataset", p,
                     "pass a .csv label table, a folder holding one, or a MedMNIST .npz")


# ------------------------------------------------------------------------------------ pixels


def npz_images_to_float(images: np.ndarray) -> np.ndarray:
    """MedMNIST arrays to channel-first float32 in [0, 1] (integers divided by their maximum).

    Args:
        images: ``(N, H, W)`` greyscale, ``(N, H, W, 3)`` RGB (channels last, when the last axis
            is 1 or 3 and differs from the others), ``(N, D, H, W)`` volumes, or
            ``(N, D, H, W, C)``.

    Returns:
        ``(N, C, *spatial)`` float32.
    """
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3) and a.shape[1] == a.shape[2] != a.shape[3]:
            a = np.moveaxis(a, -1, 1)
        else:
            a = a[:, None]
    elif a.ndim == 5:
        a = np.moveaxis(a, -1, 1)
    else:
        raise ValueError(f"cannot interpret image array of shape {a.shape}")
    if a.dtype.kind in "ui":
        return (a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)).astype(np.float32)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    return a.astype(np.float32)


def load_images(ds: ClsDataset) -> np.ndarray | list[np.ndarray]:
    """Read every case's pixels, in item order.

    Args:
        ds: The dataset.

    Returns:
        For ``.npz`` datasets one ``(N, C, *spatial)`` float32 array scaled to [0, 1]; for file
        datasets a list of ``(C, *spatial)`` float32 arrays (sizes may differ) as read by
        :func:`medseg.io.read_image`.

    Raises:
        InputError: an unreadable file, or NaN/infinite values.
    """
    if ds.arrays:
        out = []
        for it in ds.items:
            if it.split not in ds.arrays:
                raise InputError(f"case {it.item_id}: no array for split {it.split!r}",
                                 ds.source, "reload the dataset")
        for split in dict.fromkeys(it.split for it in ds.items):
            idx = [it.index for it in ds.items if it.split == split]
            out.append((split, npz_images_to_float(ds.arrays[split][idx])))
        # restore item order (items of a split are contiguous after loading, but subsets may
        # interleave them)
        pos = {s: 0 for s, _ in out}
        arrs = dict(out)
        if not ds.items:
            sample = npz_images_to_float(next(iter(ds.arrays.values()))[:1])
            return np.zeros((0, *sample.shape[1:]), dtype=np.float32)
        first = arrs[ds.items[0].split]
        res = np.empty((len(ds.items), *first.shape[1:]), dtype=np.float32)
        for k, it in enumerate(ds.items):
            res[k] = arrs[it.split][pos[it.split]]
            pos[it.split] += 1
        return res
    images = []
    for it in ds.items:
        arr, _ = read_image(it.images[0] if len(it.images) == 1 else it.images)
        check_finite(arr, it.images[0])
        images.append(arr)
    return images

"""Fuzzing the tables: dataset.json (MSD and nnU-Net v2), classification CSV, predictions.csv and
MedMNIST ``.npz`` (issue 10).

Structured mutations (a key of a valid table set to any JSON value or deleted; cells and headers
drawn from awkward values: huge or Unicode digits, NaN, paths with ``..``, absolute paths, NUL
characters, fields over the CSV module's limit; other encodings; arrays of any dtype and shape,
``.npy`` headers that lie about the shape or ask for objects) plus byte-level mutations and random
bytes. Property: only ``MedsegError`` escapes, in time and bounded memory.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import zipfile
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from fuzz_harness import fuzz_pair, mutated_bytes, random_bytes
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

# ----------------------------------------------------------------------------- JSON values

PATHS = ["./imagesTr/c0.nii.gz", "imagesTr/c1.nii.gz", "../outside.nii.gz", "/etc/passwd",
         "/dev/zero", "a\x00b", "x" * 5000, "", ".", "imagesTr", "./imagesTs/t0.nii.gz",
         "imagesTr/../imagesTr/c0.nii.gz", "link.nii.gz"]

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, -1, 2, 10**30, -(10**30), 2**63]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(PATHS),
    st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["0", "1", "image", "label", "images", "background", "x"])
        | st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def key_paths(obj, prefix=()) -> list[tuple]:
    """Every key / index path inside a JSON value."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += key_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += key_paths(v, (*prefix, i))
    return out


@st.composite
def mutated_json(draw, seed):
    """``seed`` with a few keys set to any JSON value, deleted, or new keys added."""
    obj = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 4))):
        paths = key_paths(obj)
        path = draw(st.sampled_from(paths))
        value = draw(JSON_VALUES)
        if not path:
            obj = value if draw(st.integers(0, 9)) == 0 else obj
            continue
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = value
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = value
        else:
            parent.append(value)
    return obj


def dump_json(obj) -> bytes:
    return json.dumps(obj).encode()  # NaN/inf come out as NaN/Infinity, as Python writes them


# --------------------------------------------------------------------------- dataset.json


def _msd_table() -> dict:
    return {"name": "fz", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "organ"}, "numTraining": 2,
            "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                         for i in range(2)],
            "test": ["./imagesTs/t0.nii.gz"], "tensorImageSize": "3D"}


def _v2_table() -> dict:
    return {"name": "fz", "channel_names": {"0": "CT"},
            "labels": {"background": 0, "organ": 1, "ignore": 2}, "numTraining": 2,
            "file_ending": ".nii.gz"}


@cache
def tiny_nifti() -> bytes:
    return nib.Nifti1Image(np.zeros((3, 3, 2), np.uint8), np.eye(4)).to_bytes()


@st.composite
def dataset_case(draw):
    v2 = draw(st.booleans())
    seed = _v2_table() if v2 else _msd_table()
    kind = draw(st.sampled_from(["json", "json", "bytes", "random"]))
    if kind == "json":
        raw = dump_json(draw(mutated_json(seed)))
    elif kind == "bytes":
        raw = draw(mutated_bytes(dump_json(seed), hot=400))
    else:
        raw = draw(random_bytes())
    return v2, raw


def write_dataset_case(d: Path, case) -> Path:
    v2, raw = case
    root = d / "ds"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        img = f"c{i}_0000.nii.gz" if v2 else f"c{i}.nii.gz"
        (root / "imagesTr" / img).write_bytes(gzip_nifti())
        (root / "labelsTr" / f"c{i}.nii.gz").write_bytes(gzip_nifti())
    (root / "imagesTs" / ("t0_0000.nii.gz" if v2 else "t0.nii.gz")).write_bytes(gzip_nifti())
    (d / "outside.nii.gz").write_bytes(gzip_nifti())
    (root / "link.nii.gz").symlink_to(d / "outside.nii.gz")
    (root / "dataset.json").write_bytes(raw)
    return root


@cache
def gzip_nifti() -> bytes:
    import gzip

    return gzip.compress(tiny_nifti())


test_dataset_json, test_dataset_json_long = fuzz_pair(dataset_case(), "dataset_json",
                                                      write_dataset_case)


# --------------------------------------------------------------------- classification CSV

CELLS = ["img0.png", "img1.png", "img2.png", "img0.png;img1.png", "0", "1", "-1", "2", "1.0",
         "benign", "malignant", "", " ", "../img0.png", "/etc/passwd", "/dev/zero", "link.png",
         "\u0663", "\u00b2", "1e400", "99999999999999999999", "9" * 5000, "nan", "inf", "\x00",
         '"', "train", "val", "test", "a,b", "x" * 1000]
HEADERS = ["image", "label", "id", "split", "Image", "LABEL", "effusion", "nodule", "", "image"]


@st.composite
def csv_text(draw, header_words, cells):
    header = draw(st.sampled_from([header_words[:2], header_words[:4]])
                  | st.lists(st.sampled_from(header_words) | st.text(max_size=6), min_size=1,
                             max_size=5))
    width = len(header)
    rows = draw(st.lists(st.lists(st.sampled_from(cells[:8]) | st.sampled_from(cells)
                                  | st.text(max_size=10),
                                  min_size=max(width - 1, 0), max_size=width + 1), max_size=6))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    text = buf.getvalue()
    if draw(st.integers(0, 19)) == 0:  # a field over csv.field_size_limit()
        text += '"' + "y" * (csv.field_size_limit() + 1) + '",1\n'
    return text


@st.composite
def classification_case(draw):
    kind = draw(st.sampled_from(["table", "table", "bytes", "random"]))
    if kind == "table":
        text = draw(csv_text(HEADERS, CELLS))
        enc = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
        return text.encode(enc, "replace")
    valid = b"image,label\nimg0.png,benign\nimg1.png,malignant\nimg2.png,benign\n"
    if kind == "bytes":
        return draw(mutated_bytes(valid, hot=len(valid)))
    return draw(random_bytes())


@cache
def tiny_png() -> bytes:
    b = io.BytesIO()
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).save(b, format="PNG")
    return b.getvalue()


def write_classification_case(d: Path, raw: bytes) -> Path:
    data = d / "data"
    data.mkdir()
    for i in range(3):
        (data / f"img{i}.png").write_bytes(tiny_png())
    (d / "outside.png").write_bytes(tiny_png())
    (data / "link.png").symlink_to(d / "outside.png")
    p = data / "labels.csv"
    p.write_bytes(raw)
    return p


test_classification_csv, test_classification_csv_long = fuzz_pair(
    classification_case(), "csv", write_classification_case)


# ------------------------------------------------------------------------ predictions.csv

PRED_HEADERS = ["id", "p_a", "p_b", "prediction", "p_", "predictive_entropy", "p_a", "ID"]
PRED_CELLS = ["0", "1", "0.5", "0.25", "-0.1", "1.5", "nan", "inf", "-inf", "1e400", "high", "",
              "x", "a", "b", "\x00", "0x10", "1_0", "\u0663"]


@st.composite
def predictions_case(draw):
    kind = draw(st.sampled_from(["table", "table", "bytes", "random"]))
    if kind == "table":
        return draw(csv_text(PRED_HEADERS, PRED_CELLS)).encode(
            draw(st.sampled_from(["utf-8", "latin-1", "utf-16"])), "replace")
    valid = b"id,p_a,p_b,prediction\nx,0.2,0.8,b\ny,0.9,0.1,a\n"
    if kind == "bytes":
        return draw(mutated_bytes(valid, hot=len(valid)))
    return draw(random_bytes())


def write_predictions_case(d: Path, raw: bytes) -> Path:
    p = d / "predictions.csv"
    p.write_bytes(raw)
    return p


test_predictions_csv, test_predictions_csv_long = fuzz_pair(
    predictions_case(), "predictions", write_predictions_case)


# ------------------------------------------------------------------------------------ npz

NPZ_KEYS = ["train_images", "train_labels", "val_images", "val_labels", "test_images",
            "test_labels", "other"]
DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int64, np.uint64, np.float16,
                          np.float32, np.float64, np.bool_, np.complex64, np.dtype("<U3")])


def _arrays():
    return hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5))


def _npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


@st.composite
def npz_case(draw):
    kind = draw(st.sampled_from(["arrays", "arrays", "header", "bytes", "random"]))
    valid = {"train_images": np.zeros((3, 4, 4), np.uint8), "train_labels": np.array([0, 1, 2]),
             "test_images": np.ones((2, 4, 4), np.uint8), "test_labels": np.array([[1], [0]])}
    if kind == "arrays":
        arrays = dict(valid) if draw(st.booleans()) else {}
        for key in draw(st.lists(st.sampled_from(NPZ_KEYS), max_size=4)):
            arrays[key] = draw(_arrays())
        members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    else:
        members = {f"{k}.npy": _npy(v) for k, v in valid.items()}
        if kind == "header":  # lie about shape, order or dtype in one .npy header
            key = draw(st.sampled_from(sorted(members)))
            raw = members[key]
            n = int.from_bytes(raw[8:10], "little")
            header = raw[10:10 + n].decode("latin-1")
            header = draw(st.sampled_from([
                header.replace("'shape': (", "'shape': (1000000, 1000000, "),
                header.replace("'shape': (", "'shape': (-5, "),
                header.replace("'fortran_order': False", "'fortran_order': True"),
                header.replace("'descr': '", "'descr': '|O' or '"),
                "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': '<U999999999', 'fortran_order': False, 'shape': (3,), }",
                "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3,), }",
                draw(st.text(max_size=80)),
            ]))
            enc = header.encode("latin-1", "replace")
            members[key] = raw[:8] + len(enc).to_bytes(2, "little") + enc + raw[10 + n:]
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = buf.getvalue()
    if kind == "bytes":
        return draw(mutated_bytes(raw, hot=len(raw)))
    if kind == "random":
        return draw(random_bytes())
    return raw


def write_npz_case(d: Path, raw: bytes) -> Path:
    p = d / "data.npz"
    p.write_bytes(raw)
    return p


test_npz, test_npz_long = fuzz_pair(npz_case(), "npz", write_npz_case)

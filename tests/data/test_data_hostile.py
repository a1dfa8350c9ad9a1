"""Hostile and malformed tables (issue 10): dataset.json, label CSVs, predictions.csv, npz, and
the resampling plan's grid cap.

Every bad input ends in one InputError whose full text is checked; the input folder's hash is the
same before and after.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from folder_state import folder_state
from medseg.data import load_classification_csv, load_medmnist_npz, load_msd_folder, open_dataset
from medseg.data.classification import open_classification
from medseg.data.layouts import load_label_table
from medseg.data.preprocess import ChannelNorm, PreprocessPlan, preprocess_image
from medseg.errors import InputError
from medseg.io import ImageMeta
from medseg.io.limits import ENV_MAX_IMAGE_BYTES
from medseg.tasks.classification import read_predictions
from medseg.transforms.resample import shape_for_spacing

OUTSIDE_HINT = ("list the file relative to the dataset folder and keep it inside it, or pass "
                "allow_outside_root=True (setting data.allow_outside_root: true) if you trust this "
                "table")


def refused(fn, *args, folder: Path, **kw) -> str:
    before = folder_state(folder)
    with pytest.raises(InputError) as info:
        fn(*args, **kw)
    assert folder_state(folder) == before
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------ dataset.json


def _msd(root: Path, table: dict | list | str) -> Path:
    """An MSD folder with two training cases and one test image; ``table`` replaces the JSON."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    lab = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    for i in range(2):
        nib.save(img, root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(lab, root / "labelsTr" / f"c{i}.nii.gz")
    nib.save(img, root / "imagesTs" / "t0.nii.gz")
    text = table if isinstance(table, str) else json.dumps(table)
    (root / "dataset.json").write_text(text)
    return root


def _table(**changes) -> dict:
    t = {"name": "x", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
         "numTraining": 2,
         "training": [{"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"}
                      for i in range(2)],
         "test": ["./imagesTs/t0.nii.gz"]}
    t.update(changes)
    return t


def test_valid_table_loads(tmp_path):
    ds = load_msd_folder(_msd(tmp_path / "d", _table()))
    assert [c.case_id for c in ds.cases] == ["c0", "c1"] and len(ds.test_cases) == 1


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN"])
def test_label_value_infinity_or_nan(tmp_path, value):
    text = '{"name": "x", "channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": ' \
           + value + '}}'
    root = _msd(tmp_path / "d", text)
    j = root / "dataset.json"
    assert refused(load_msd_folder, root, folder=root) == (
        f"{j}: dataset.json is not valid JSON ({value} is not a JSON number) -> fix the syntax "
        "(NaN and Infinity are not JSON)"
    )
    assert refused(load_label_table, j, folder=root).startswith(f"{j}: dataset.json is not valid")


def test_label_value_overflowing_to_infinity(tmp_path):
    root = _msd(tmp_path / "d", '{"channel_names": {"0": "CT"}, "labels": {"background": 0, '
                                '"organ": 1e400}}')
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: label 'organ' has a non-integer value inf -> use integers")


def test_test_is_not_a_list(tmp_path):
    root = _msd(tmp_path / "d", _table(test=5))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: 'test' must be a list of image paths, got 5 -> write \"test\": "
        "[\"./imagesTs/case.nii.gz\", ...] or omit it"
    )


def test_test_entry_without_image(tmp_path):
    root = _msd(tmp_path / "d", _table(test=[{"label": "./labelsTs/t0.nii.gz"}]))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: 'test' entry 0 needs an 'image' key -> write "
        "{\"image\": \"./imagesTs/case.nii.gz\"} or the path alone"
    )


def test_dataset_json_that_is_a_list(tmp_path):
    root = _msd(tmp_path / "d", [1, 2, 3])
    j = root / "dataset.json"
    expected = (f"{j}: dataset.json must hold a JSON object, not a list -> see the MSD/nnU-Net "
                "format: {\"labels\": ..., \"channel_names\": ...}")
    assert refused(load_msd_folder, root, folder=root) == expected
    assert refused(load_label_table, j, folder=root) == expected  # the --dataset-json reader


def test_dataset_json_not_utf8_or_too_deep(tmp_path):
    root = _msd(tmp_path / "d", "{}")
    j = root / "dataset.json"
    j.write_bytes(b'{"name": "\xff\xfe"}')
    assert refused(load_msd_folder, root, folder=root) == (
        f"{j}: dataset.json is not UTF-8 text (byte 10) -> save it as UTF-8 JSON")
    j.write_text("[" * 100_000 + "]" * 100_000)
    assert refused(load_msd_folder, root, folder=root).startswith(
        f"{j}: dataset.json is not valid JSON (maximum recursion depth exceeded")


def test_entries_of_the_wrong_type(tmp_path):
    root = _msd(tmp_path / "d", _table(training=[{"image": 5, "label": "./labelsTr/c0.nii.gz"}]))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: training[0].image must be a non-empty file path (a string), "
        "got 5 -> write the path of the file relative to the dataset folder")
    root = _msd(tmp_path / "e", _table(file_ending=7))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: 'file_ending' must be a file ending such as '.nii.gz', got 7 "
        "-> write e.g. \"file_ending\": \".nii.gz\"")
    root = _msd(tmp_path / "f", {"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                 "dataset": {"c0": {"images": 3, "label": "x"}}})
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / 'dataset.json'}: dataset entry 'c0': 'images' must be a list of file paths, "
        "got 3 -> list one file per channel")


def test_paths_outside_the_dataset_root(tmp_path):
    secret = tmp_path / "secret.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), secret)
    j = "dataset.json"
    root = _msd(tmp_path / "abs", _table(test=[str(secret)]))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / j}: test[0] {str(secret)!r} is an absolute path -> {OUTSIDE_HINT}")
    root = _msd(tmp_path / "up", _table(test=["../secret.nii.gz"]))
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / j}: test[0] '../secret.nii.gz' climbs out of the folder with '..' -> "
        f"{OUTSIDE_HINT}")
    root = _msd(tmp_path / "link", _table())
    (root / "imagesTs" / "t0.nii.gz").unlink()
    (root / "imagesTs" / "t0.nii.gz").symlink_to(secret)
    assert refused(load_msd_folder, root, folder=root) == (
        f"{root / j}: test[0] './imagesTs/t0.nii.gz' resolves outside the dataset folder "
        f"{root.resolve()} (to {secret.resolve()}, through a symbolic link) -> {OUTSIDE_HINT}")
    # the user can opt in
    for name in ("abs", "up", "link"):
        ds = open_dataset(tmp_path / name, allow_outside_root=True)
        assert ds.test_cases[0].images[0] == secret.resolve()


# ------------------------------------------------------------------------- classification CSV


def _png_folder(root: Path, n: int = 2) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / f"img{i}.png")


def test_csv_not_utf8(tmp_path):
    _png_folder(tmp_path)
    t = tmp_path / "labels.csv"
    t.write_bytes("image,label\nimg0.png,b\xe9nin\n".encode("latin-1"))
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: label table is not UTF-8 text (byte 0xe9 after line 0 cannot be decoded) -> save "
        "the table as UTF-8 (e.g. in a spreadsheet: 'CSV UTF-8')")


def test_csv_field_over_the_csv_limit(tmp_path):
    _png_folder(tmp_path)
    t = tmp_path / "labels.csv"
    t.write_text('image,label\nimg0.png,a\n"img1.png' + "x" * (csv.field_size_limit() + 10)
                 + '",b\n')
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: label table is not a readable CSV table (a field after line 2 is longer than the "
        f"CSV module's limit of {csv.field_size_limit()} characters) -> check that it is a "
        "comma-separated text table (not a binary file) and that every quote is closed")


def test_csv_nul_bytes_and_huge_class_index(tmp_path):
    _png_folder(tmp_path)
    t = tmp_path / "labels.csv"
    t.write_bytes(b"image,label\nimg\x000.png,a\n")
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: row at line 2: image 'img\\x000.png' holds a NUL character -> write a plain "
        "file path")
    t.write_text("image,label\nimg0.png,0\nimg1.png,99999999999999\n")
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: row at line 3: class index 99999999999999 implies more than 100000 classes -> "
        "number the classes 0..K-1, or write class names instead of indices")
    t.write_text("image,label\nimg0.png,0\nimg1.png,\u00b2\n")  # a superscript digit
    ds = load_classification_csv(t)
    assert ds.class_names == ["0", "\u00b2"]  # a class name, not an index


def test_csv_paths_outside_the_image_folder(tmp_path):
    data = tmp_path / "data"
    _png_folder(data)
    _png_folder(tmp_path / "other")
    t = data / "labels.csv"
    t.write_text(f"image,label\nimg0.png,a\n{tmp_path / 'other' / 'img1.png'},b\n")
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: row at line 3: image {str(tmp_path / 'other' / 'img1.png')!r} is an absolute path "
        f"-> {OUTSIDE_HINT}")
    t.write_text("image,label\nimg0.png,a\n../other/img1.png,b\n")
    assert refused(load_classification_csv, t, folder=tmp_path) == (
        f"{t}: row at line 3: image '../other/img1.png' climbs out of the folder with '..' -> "
        f"{OUTSIDE_HINT}")
    (data / "link.png").symlink_to(tmp_path / "other" / "img1.png")
    t.write_text("image,label\nimg0.png,a\nlink.png,b\n")
    assert refused(open_classification, t, folder=tmp_path) == (
        f"{t}: row at line 3: image 'link.png' resolves outside the dataset folder "
        f"{data.resolve()} (to {(tmp_path / 'other' / 'img1.png').resolve()}, through a symbolic "
        f"link) -> {OUTSIDE_HINT}")
    assert len(open_classification(t, allow_outside_root=True)) == 2


# ------------------------------------------------------------------------ predictions.csv


def test_predictions_with_a_non_numeric_probability(tmp_path):
    p = tmp_path / "predictions.csv"
    p.write_text("id,p_a,p_b,prediction\nx,0.2,0.8,b\ny,high,0.1,a\n")
    redo = "write it again with medseg predict"
    assert refused(read_predictions, tmp_path, folder=tmp_path) == (
        f"{p}: line 3: probability p_a = 'high' is not a number in [0, 1] -> {redo}")
    p.write_text("id,p_a,p_b,prediction\nx,nan,0.8,b\n")
    assert refused(read_predictions, p, folder=tmp_path) == (
        f"{p}: line 2: probability p_a = 'nan' is not a number in [0, 1] -> {redo}")
    p.write_text("id,p_a,p_b,prediction\nx,0.2\n")
    assert refused(read_predictions, p, folder=tmp_path) == (
        f"{p}: line 2 has 2 values but the header has 4 columns -> {redo}")
    p.write_text("name,p_a\nx,0.2\n")
    assert refused(read_predictions, p, folder=tmp_path) == (
        f"{p}: no 'id' column in header ['name', 'p_a'] -> {redo}")
    p.write_bytes(b"id,p_a\n\xff,0.2\n")
    assert refused(read_predictions, p, folder=tmp_path).startswith(
        f"{p}: predictions table is not UTF-8 text")
    p.write_text("id,p_a,p_b\nx,0.25,0.75\n")
    ids, names, probs = read_predictions(p)
    assert ids == ["x"] and names == ["a", "b"] and probs.tolist() == [[0.25, 0.75]]


# ------------------------------------------------------------------------------------- npz


def _zip_npy(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def test_npz_bad_inputs(tmp_path):
    hint = "re-export it with numpy.savez (arrays {train,val,test}_images / _labels)"
    p = tmp_path / "a.npz"
    np.save(tmp_path / "plain.npy", np.zeros(3))
    os.replace(tmp_path / "plain.npy", p)  # an .npy file named .npz
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: not an .npz archive (no ZIP structure) -> {hint}")
    # an object array is never unpickled
    header = b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    _zip_npy(p, {"train_images.npy": header.ljust(128, b" ")[:127] + b"\n",
                 "train_labels.npy": _npy(np.zeros(2, np.int64))})
    msg = refused(load_medmnist_npz, p, folder=tmp_path)
    assert msg.startswith(f"{p}: ")
    # a header declaring 10^6 x 10^6 x 10^6 uint8 with no data behind it
    arr_hdr = _npy(np.zeros((1, 1, 1), np.uint8))
    big = arr_hdr.replace(b"(1, 1, 1)", b"(1000000, 1000000, 1000000)")
    big = big[:8] + (len(big) - 10 - 1).to_bytes(2, "little") + big[10:-1]
    _zip_npy(p, {"train_images.npy": big, "train_labels.npy": _npy(np.zeros(2, np.int64))})
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: the header declares a 1000000x1000000x1000000 array 'train_images' of 888 PiB, "
        "over medseg's limit of 4 GiB per image -> the header is corrupt or crafted: re-export "
        "the file (a genuine image this large needs MEDSEG_MAX_IMAGE_BYTES raised)")
    # a scalar where a per-case array belongs
    np.savez(p, train_images=np.zeros((2, 4, 4)), train_labels=np.int64(3))
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: array 'train_labels' is a scalar, not one entry per case -> store images as "
        "(N, H, W, ...) and labels as (N,) or (N, C)")
    # labels so large that 0..max would be billions of class names
    np.savez(p, train_images=np.zeros((2, 4, 4)), train_labels=np.array([0, 2**40]))
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: train_labels holds values from 0 to 1099511627776; class indices run 0..K-1 (K at "
        "most 100000), multi-label values are 0, 1 or -1 -> store class indices or 0/1/-1")
    np.savez(p, train_images=np.zeros((2, 4, 4)), train_labels=np.array([0.0, np.inf]))
    assert refused(load_medmnist_npz, p, folder=tmp_path).startswith(
        f"{p}: train_labels holds ")
    np.savez(p, train_images=np.zeros((2, 4, 4)), train_labels=np.array(["a", "b"]))
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: array 'train_labels' has dtype <U1 (only numbers are read; Python objects are "
        f"never unpickled) -> {hint}")
    # found by the fuzz campaign: images without pixels, and splits of different image sizes
    np.savez(p, train_images=np.zeros((3, 0, 0)), train_labels=np.zeros(3, np.int64))
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: train_images has shape (3, 0, 0) -> store images as (N, H, W), (N, H, W, 3) or "
        "(N, D, H, W)")
    np.savez(p, train_images=np.zeros((2, 4, 4)), train_labels=np.array([0, 1]),
             test_images=np.zeros((1, 5, 4)), test_labels=np.array([0]))
    assert refused(load_medmnist_npz, p, folder=tmp_path) == (
        f"{p}: image shapes differ between splits: train (2, 4, 4), test (1, 5, 4) -> store every "
        "split's images at one size")
    p.write_bytes(b"PK\x03\x04 truncated")
    assert refused(load_medmnist_npz, p, folder=tmp_path).startswith(f"{p}: ")


# ------------------------------------------------------------------- resampling plan's grid


def _plan(spacing) -> PreprocessPlan:
    return PreprocessPlan(spatial_dims=len(spacing), target_spacing=list(spacing),
                          normalization=[ChannelNorm("zscore")])


def test_resampling_plan_caps_the_target_grid(tmp_path, monkeypatch):
    src = tmp_path / "case.nii.gz"
    meta = ImageMeta.from_spacing((900.0, 900.0, 900.0), (64, 64, 64))
    meta.source = (src,)
    image = np.zeros((1, 64, 64, 64), np.float32)
    with pytest.raises(InputError) as info:
        preprocess_image(image, meta, _plan((1.0, 1.0, 1.0)))
    assert str(info.value) == (
        f"{src}: resampling the 64x64x64 grid from spacing (900, 900, 900) mm to (1, 1, 1) mm "
        "would make a 57600x57600x57600 grid (1.91e+14 voxels), over the limit of 1073741824 "
        "voxels (MEDSEG_MAX_IMAGE_BYTES as float32) -> check the voxel spacing in the image "
        "header, or choose a coarser target spacing")
    # the issue's example: 5000 mm pixels resampled to 1 mm plan a 20000^2 grid
    monkeypatch.setenv(ENV_MAX_IMAGE_BYTES, "1G")
    with pytest.raises(InputError, match=r"would make a 20000x20000 grid \(4e\+08 voxels\), over "
                       r"the limit of 268435456 voxels"):
        shape_for_spacing((4, 4), (5000.0, 5000.0), (1.0, 1.0))
    assert shape_for_spacing((4, 4), (5000.0, 5000.0), (1.0, 1.0), max_voxels=10**9) == (
        20000, 20000)
    with pytest.raises(ValueError, match="positive finite"):
        shape_for_spacing((4, 4), (float("nan"), 1.0), (1.0, 1.0))


def test_instance_map_with_huge_ids_is_renumbered(tmp_path):
    from medseg.data.instance import InstanceCase, read_instance_map

    lab = np.zeros((4, 5), np.int64)
    lab[0, 0], lab[2, 2], lab[3, 4] = 2**40, 7, 2**40  # sparse ids far beyond the voxel count
    path = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(lab, np.eye(4), dtype=np.int64), path)
    out = read_instance_map(InstanceCase("c", path, [], path), (4, 5))
    assert out.max() == 2 and out[2, 2] == 1 and out[0, 0] == out[3, 4] == 2
    assert (out == 0).sum() == (lab == 0).sum()


def test_allow_outside_root_is_a_setting_of_every_data_task(tmp_path):
    """``data.allow_outside_root`` reaches the dataset readers (refused by default)."""
    from medseg.tasks import get_task
    from medseg.training.config import ExperimentConfig

    secret = tmp_path / "secret.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), secret)
    root = _msd(tmp_path / "abs", _table(test=[str(secret)]))
    cfg = ExperimentConfig().override([f"data.dataset={root}"])
    task = get_task("segmentation")
    assert "data.allow_outside_root" in task.uses
    with pytest.raises(InputError, match="is an absolute path"):
        task.open_dataset(cfg)
    cfg = cfg.override(["data.allow_outside_root=true"])
    assert task.open_dataset(cfg).test_cases[0].images[0] == secret.resolve()
    assert "data.allow_outside_root" in get_task("classification").uses


def test_json_tables_are_read_strictly(tmp_path):
    from medseg.io.paths import read_json_object

    f = tmp_path / "restoration.json"
    for text, problem in [("[1, 2]", "must hold a JSON object, not a list"),
                          ('{"a": NaN}', "is not valid JSON (NaN is not a JSON number"),
                          ("{", "is not valid JSON (Expecting property name"),
                          ("[" * 100_000 + "]" * 100_000, "is not valid JSON")]:
        f.write_text(text)
        with pytest.raises(InputError) as info:
            read_json_object(f, "the fix")
        assert str(info.value).startswith(f"{f}: restoration.json {problem}"), str(info.value)
    f.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(InputError, match=r"restoration.json is not UTF-8 text \(byte 7\)"):
        read_json_object(f)
    f.write_text('{"a": 1}')
    assert read_json_object(f) == {"a": 1}

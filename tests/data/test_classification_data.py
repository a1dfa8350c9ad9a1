"""Classification datasets: CSV tables (single / multi-label), NIfTI volumes, MedMNIST npz."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.data import (
    MISSING,
    load_classification_csv,
    load_images,
    load_medmnist_npz,
    open_classification,
)
from medseg.errors import InputError


def _png(path: Path, value: int, size: tuple[int, int] = (6, 5)) -> None:
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)


def _folder(tmp_path: Path, n: int = 4) -> Path:
    for i in range(n):
        _png(tmp_path / f"img{i}.png", 10 * i)
    return tmp_path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_single_label_names_sorted(tmp_path: Path) -> None:
    _folder(tmp_path)
    table = _csv(tmp_path / "labels.csv",
                 "image,label\nimg0.png,normal\nimg1.png,benign\nimg2.png,malignant\n"
                 "img3.png,benign\n")
    ds = load_classification_csv(table)
    assert ds.task == "single"
    assert ds.class_names == ["benign", "malignant", "normal"]
    np.testing.assert_array_equal(ds.labels(), [2, 0, 1, 0])
    assert ds.ids == ["img0", "img1", "img2", "img3"]
    assert ds.class_counts()["benign"] == {"positive": 2, "negative": 2, "missing": 0}
    images = load_images(ds)
    assert len(images) == 4 and images[1].shape == (1, 6, 5) and images[1].dtype == np.float32
    assert float(images[3][0, 0, 0]) == 30.0


def test_single_label_integers_and_declared_names(tmp_path: Path) -> None:
    _folder(tmp_path, 3)
    table = _csv(tmp_path / "t.csv", "id,image,label\na,img0.png,2\nb,img1.png,0\nc,img2.png,2\n")
    ds = load_classification_csv(table)
    assert ds.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.labels(), [2, 0, 2])
    assert ds.ids == ["a", "b", "c"]
    # declared names: both names and indices accepted, order of declaration kept
    table2 = _csv(tmp_path / "t2.csv", "image,label\nimg0.png,tumour\nimg1.png,0\n")
    ds2 = load_classification_csv(table2, class_names=["healthy", "tumour"])
    np.testing.assert_array_equal(ds2.labels(), [1, 0])


def test_label_outside_declared_classes(tmp_path: Path) -> None:
    _folder(tmp_path, 2)
    table = _csv(tmp_path / "t.csv", "image,label\nimg0.png,healthy\nimg1.png,tumor\n")
    with pytest.raises(InputError, match=r"line 3.*'tumor'.*declared"):
        load_classification_csv(table, class_names=["healthy", "tumour"])
    table2 = _csv(tmp_path / "t2.csv", "image,label\nimg0.png,0\nimg1.png,5\n")
    with pytest.raises(InputError, match="line 3"):
        load_classification_csv(table2, class_names=["a", "b"])


def test_missing_file_names_row(tmp_path: Path) -> None:
    _folder(tmp_path, 1)
    table = _csv(tmp_path / "t.csv", "image,label\nimg0.png,a\nnope.png,b\n")
    with pytest.raises(InputError, match=r"line 3.*nope.png.*does not exist") as e:
        load_classification_csv(table)
    assert e.value.path == table


def test_duplicate_ids(tmp_path: Path) -> None:
    _folder(tmp_path, 2)
    table = _csv(tmp_path / "t.csv", "id,image,label\nx,img0.png,a\nx,img1.png,b\n")
    with pytest.raises(InputError, match=r"line 3.*duplicate id 'x'.*line 2"):
        load_classification_csv(table)
    # the same image listed twice without ids: duplicate stem
    table2 = _csv(tmp_path / "t2.csv", "image,label\nimg0.png,a\nimg0.png,b\n")
    with pytest.raises(InputError, match="duplicate id 'img0'"):
        load_classification_csv(table2)


def test_empty_csv(tmp_path: Path) -> None:
    for text in ("", "image,label\n", "\n\n"):
        table = _csv(tmp_path / "t.csv", text)
        with pytest.raises(InputError, match="empty label table"):
            load_classification_csv(table)


def test_multi_label_with_missing(tmp_path: Path) -> None:
    _folder(tmp_path, 3)
    table = _csv(tmp_path / "t.csv",
                 "image,effusion,nodule,split\nimg0.png,1,-1,train\nimg1.png,0,1,train\n"
                 "img2.png,-1,0,val\n")
    ds = load_classification_csv(table)
    assert ds.task == "multi" and ds.class_names == ["effusion", "nodule"]
    np.testing.assert_array_equal(ds.labels(), [[1, MISSING], [0, 1], [MISSING, 0]])
    np.testing.assert_array_equal(ds.observed(), [[True, False], [True, True], [False, True]])
    assert ds.class_counts()["nodule"] == {"positive": 1, "negative": 1, "missing": 1}
    assert ds.splits() == ["train", "val"]
    assert ds.subset("val").ids == ["img2"]
    # declared order is honoured
    ds2 = load_classification_csv(table, class_names=["nodule", "effusion"])
    np.testing.assert_array_equal(ds2.labels()[0], [MISSING, 1])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("image,a,b\nimg0.png,1,0\nimg1.png,1\n", r"line 3: 2 values but the header has 3"),
        ("image,a,b\nimg0.png,1,0,1\nimg1.png,1,0\n", r"line 2: 4 values"),
        ("image,a,b\nimg0.png,1,2\nimg1.png,1,0\n", r"line 2.*'2'.*column 'b'.*not 0, 1 or -1"),
        ("image,a,b\nimg0.png,1,yes\nimg1.png,1,0\n", r"'yes'"),
        ("image,a,b\nimg0.png,1,\nimg1.png,1,0\n", r"line 2.*'' in column 'b'"),
        ("image,a,b\nimg0.png,1,-1\nimg1.png,0,-1\n", r"\['b'\] are missing \(-1\) in every row"),
    ],
)
def test_multi_label_errors(tmp_path: Path, text: str, match: str) -> None:
    _folder(tmp_path, 2)
    table = _csv(tmp_path / "t.csv", text)
    with pytest.raises(InputError, match=match):
        load_classification_csv(table)


def test_nifti_volumes_relative_to_image_dir(tmp_path: Path) -> None:
    vol_dir = tmp_path / "vols"
    vol_dir.mkdir()
    for i in range(2):
        data = np.full((4, 5, 3), float(i + 1), dtype=np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), vol_dir / f"c{i}.nii.gz")
    table = _csv(tmp_path / "labels.csv", "image,label\nc0.nii.gz,1\nc1.nii.gz,0\n")
    ds = load_classification_csv(table, image_dir=vol_dir, modality="CT")
    assert ds.ids == ["c0", "c1"] and ds.modality == "CT"
    images = load_images(ds)
    assert images[0].shape == (1, 4, 5, 3)
    assert float(images[1].mean()) == 2.0
    # paths relative to the CSV folder, two channel files per case separated by ';'
    table2 = _csv(tmp_path / "mc.csv", "id,image,label\ncase,vols/c0.nii.gz;vols/c1.nii.gz,1\n")
    (img,) = load_images(load_classification_csv(table2))
    assert img.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(img[:, 0, 0, 0], [1.0, 2.0])


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_single_label(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = _npz(tmp_path / "d.npz", train_images=imgs[:3], train_labels=np.array([[0], [1], [1]]),
                val_images=imgs[3:], val_labels=np.array([[1], [0]]))
    ds = open_classification(path)
    assert ds.task == "single" and ds.class_names == ["0", "1"] and len(ds) == 5
    assert ds.ids[3] == "val_00000"
    np.testing.assert_array_equal(ds.labels(), [0, 1, 1, 1, 0])
    x = load_images(ds)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[4, 0], imgs[4] / 255.0, rtol=1e-6)
    # a subset that interleaves splits keeps item order
    sub = ds.subset(indices=[4, 0])
    np.testing.assert_allclose(load_images(sub)[:, 0], np.stack([imgs[4], imgs[0]]) / 255.0,
                               rtol=1e-6)
    np.testing.assert_allclose(load_images(ds.subset("val"))[:, 0], imgs[3:] / 255.0, rtol=1e-6)
    assert load_images(ds.subset("test")).shape == (0, 1, 28, 28)


def test_npz_multi_label_and_errors(tmp_path: Path) -> None:
    imgs = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    imgs[..., 2] = 255
    lab = np.array([[1, 0, -1], [0, 1, 1], [0, -1, 0]])
    ds = load_medmnist_npz(_npz(tmp_path / "m.npz", train_images=imgs, train_labels=lab),
                           class_names=["a", "b", "c"])
    assert ds.task == "multi" and ds.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.labels(), lab)
    x = load_images(ds)
    assert x.shape == (3, 3, 8, 8)  # channels-last RGB moved first
    np.testing.assert_array_equal(x[0, :, 0, 0], [0.0, 0.0, 1.0])
    bad = [
        ({"train_images": imgs}, "split 'train' has only one of train_images / train_labels"),
        ({"images": imgs, "labels": lab}, "no split found"),
        ({"train_images": imgs, "train_labels": lab[:2]}, "3 cases but train_labels 2"),
        ({"train_images": imgs, "train_labels": lab * 2}, r"values \[-2, 2\] are not 0, 1 or -1"),
        ({"train_images": imgs, "train_labels": np.array([[1, -1], [0, -1], [1, -1]])},
         "missing"),
        ({"train_images": imgs[:, :, :, 0], "train_labels": np.array([0, 1, 3])},
         "outside the declared classes"),
    ]
    for i, (arrays, match) in enumerate(bad):
        path = _npz(tmp_path / f"bad{i}.npz", **arrays)
        kwargs = {"class_names": ["x", "y"]} if "outside" in match else {}
        with pytest.raises(InputError, match=match):
            load_medmnist_npz(path, **kwargs)


@pytest.mark.parametrize(
    ("name", "n_train", "n_val"),
    [("cls_breastmnist/breastmnist_trainval.npz", 546, 78),
     ("cls_pneumoniamnist/pneumoniamnist_trainval.npz", 3882, 524)],
)
def test_real_medmnist(shared_data: Path, name: str, n_train: int, n_val: int) -> None:
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ds = load_medmnist_npz(path)
    assert ds.task == "single" and ds.class_names == ["0", "1"]
    assert len(ds.subset("train")) == n_train and len(ds.subset("val")) == n_val
    x = load_images(ds.subset("val"))
    assert x.shape == (n_val, 1, 28, 28)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    counts = ds.class_counts()
    assert counts["0"]["positive"] + counts["1"]["positive"] == n_train + n_val
    assert min(counts["0"]["positive"], counts["1"]["positive"]) > 0

"""The sandbox process of the fuzz campaign: runs one reader on one input per request.

Started by :mod:`fuzz_harness` as ``python fuzz_worker.py``. After importing medseg it caps its
own address space (``RLIMIT_AS``: what it uses now plus ``MEDSEG_FUZZ_MEMORY`` bytes), then reads
requests from stdin and answers on stdout, one JSON line each way::

    -> {"reader": "nifti", "path": "/tmp/.../case.nii.gz"}
    <- {"status": "ok" | "medseg" | "bug", "detail": "...", "seconds": 0.01, "rss_kb": 123456}

``medseg``: a :class:`medseg.errors.MedsegError` (the wanted outcome for a bad file); ``bug``:
any other exception, with its traceback (a ``MemoryError`` means the memory bound was hit).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path


def _readers() -> dict:
    from medseg.data import load_classification_csv, load_medmnist_npz, open_dataset
    from medseg.data.classification import load_images
    from medseg.data.layouts import load_label_table
    from medseg.io import read_dicom_series, read_image, read_label
    from medseg.model_folder import ModelFolder
    from medseg.tasks.classification import read_predictions
    from medseg.training.checkpoint import load_checkpoint
    from medseg.training.config import ExperimentConfig

    def image(path: str) -> None:
        try:
            read_image(path)
        finally:
            read_label(path)

    def dicom(path: str) -> None:
        read_dicom_series(path)
        read_image(path)

    def dataset_json(path: str) -> None:
        try:
            load_label_table(Path(path) / "dataset.json")
        finally:
            open_dataset(path)

    def csv_table(path: str) -> None:
        load_images(load_classification_csv(path))

    def npz(path: str) -> None:
        load_images(load_medmnist_npz(path))

    return {
        "nifti": image,
        "nrrd": image,
        "png": image,
        "tiff": image,
        "dicom": dicom,
        "dataset_json": dataset_json,
        "csv": csv_table,
        "predictions": read_predictions,
        "npz": npz,
        "yaml": ExperimentConfig.load,
        "plan": ModelFolder.open,
        "checkpoint": load_checkpoint,
    }


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    from medseg.errors import MedsegError

    readers = _readers()
    budget = int(os.environ.get("MEDSEG_FUZZ_MEMORY", str(3 * 2**30)))
    if budget > 0 and Path("/proc/self/status").exists():
        soft = _vm_bytes() + budget
        resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
    warnings.simplefilter("ignore")
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a reader prints must not corrupt the protocol
    out.write(json.dumps({"status": "ready"}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        try:
            readers[req["reader"]](req["path"])
            status, detail = "ok", ""
        except MedsegError as e:
            status, detail = "medseg", f"{type(e).__name__}: {e}"
        except BaseException as e:  # noqa: BLE001 - every other escape is what we look for
            status = "bug"
            detail = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.write(json.dumps({"status": status, "detail": detail[:4000],
                              "seconds": time.perf_counter() - t0, "rss_kb": rss}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

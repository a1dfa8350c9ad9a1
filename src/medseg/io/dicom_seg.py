"""DICOM Segmentation objects (SEG) through highdicom: label maps out, and back in.

A prediction of a DICOM series can be handed to a PACS or a DICOM viewer as one SEG object that
references the source series (``medseg predict --format dcmseg``). :func:`write_dicom_seg` takes
the label map in medseg's orientation of the series (``(column, row, slice)``, slices sorted
along the slice normal as :func:`medseg.io.read_dicom_series` reads them, whose
``ImageMeta.source`` lists the files in that order) and writes one segment per foreground class:

* segment number ``k`` = class index ``k`` (``1 .. K-1``), ``SegmentLabel`` = the class name,
  property category SCT 91723000 "Anatomical Structure" and property type a local code
  (``99MEDSEG``, value ``k``, meaning the class name: class names are free text, not SNOMED);
* algorithm type AUTOMATIC, algorithm "medseg" (family DCM 113112 "Artificial Intelligence");
* segmentation type ``BINARY`` by default (Segmentation Storage, read by every SEG-aware viewer:
  3D Slicer, OHIF, dcmqi), or ``LABELMAP`` (Label Map Segmentation Storage, DICOM 2024, one
  frame per slice holding the class index; fewer readers support it yet);
* frames without any voxel of their segment are left out (the DICOM default; a 300-slice CT
  with 100 classes would otherwise take ~1 GB as BINARY), while ``ReferencedSeriesSequence``
  lists every SOP instance of the series in slice order, so the grid stays known;
* each frame derives from the source instance of its slice (``SourceImageSequence``).

:func:`read_dicom_seg` reads a SEG (any producer) back into a label map in the same orientation:
either on the grid of a given source series, or on the grid its references and frames' plane
positions describe.

``highdicom`` is an optional dependency (``pip install medseg[dicom]``); importing this module
works without it, and the functions say how to install it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, refuse_source_overwrite
from medseg.io.limits import check_regular_file, reader_failure
from medseg.io.meta import ImageMeta

PathLike = str | os.PathLike

#: Segmentation types :func:`write_dicom_seg` writes.
SEG_TYPES = ("BINARY", "LABELMAP")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_INSTALL = "install the DICOM extra: pip install 'medseg[dicom]' (or pip install highdicom)"


def require_highdicom() -> Any:
    """The ``highdicom`` module, or a one-line error saying how to install it.

    Raises:
        InputError: highdicom is not installed.
    """
    try:
        import highdicom
    except ImportError as exc:
        raise InputError("writing or reading DICOM SEG needs the highdicom package, which is "
                         "not installed", None, _INSTALL) from exc
    return highdicom


def _source_datasets(meta: ImageMeta, dest: Path) -> list[Dataset]:
    """The source series' data sets (attributes only) in ``meta``'s slice order."""
    if not meta.source or "series_uid" not in meta.extra:
        raise InputError(
            "a DICOM SEG needs the DICOM series it segments, but this image was not read from "
            "DICOM", dest, "predict a DICOM series folder, or choose --format nii.gz")
    if "geometry" in meta.extra or meta.ndim != 3:
        raise InputError(
            "the DICOM image has no patient geometry (ImagePositionPatient / "
            "ImageOrientationPatient), which a DICOM SEG needs", meta.source[0],
            "write the prediction as NIfTI (--format nii.gz)")
    out = []
    for p in meta.source:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # the series changed on disk since it was read
            raise reader_failure(exc, p, "DICOM source file",
                                 "keep the source series unchanged while writing") from exc
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty = the default repertoire; highdicom wants none
        _fill_sop_uids(ds, p)
        out.append(ds)
    uids = [ds.SOPInstanceUID for ds in out]
    if len(set(uids)) != len(uids):
        raise InputError("several images of the series share one SOPInstanceUID, so a SEG "
                         "cannot tell them apart", meta.source[0],
                         "re-export the series with unique instance UIDs")
    return out


def _fill_sop_uids(ds: Dataset, path: Path) -> None:
    """Take SOP class / instance UIDs left empty in the data set from the file meta
    (``MediaStorageSOP...``), as some anonymisers leave them; refuse a file with neither.

    Raises:
        InputError: no SOP instance UID anywhere in the file.
    """
    fm = getattr(ds, "file_meta", None)
    for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                          ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not str(ds.get(key, "") or ""):
            value = str(fm.get(meta_key, "") or "") if fm is not None else ""
            if not value:
                raise InputError(f"the DICOM image has no {key}, which a DICOM SEG must "
                                 "reference", path, "re-export the series with its UIDs")
            setattr(ds, key, value)


def _segment_descriptions(hd: Any, class_names: Sequence[str], model_name: str
                          ) -> list[Any]:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", family=codes.cid7162.ArtificialIntelligence,
        version=_medseg_version(), parameters={"model": model_name} if model_name else None)
    category = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
    out = []
    for k in range(1, len(class_names)):
        name = str(class_names[k])[:64] or f"class {k}"
        out.append(hd.seg.SegmentDescription(
            segment_number=k, segment_label=name, segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(str(k), "99MEDSEG", name),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    return out


def _medseg_version() -> str:
    from medseg import __version__

    return __version__


def write_dicom_seg(
    path: PathLike,
    labels: Any,
    meta: ImageMeta,
    class_names: Sequence[str],
    segmentation_type: str = "BINARY",
    series_description: str = "medseg segmentation",
    model_name: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a label map of a DICOM series as a DICOM Segmentation object, atomically.

    Args:
        path: Destination file (e.g. ``case.seg.dcm``).
        labels: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) integer label map on the grid of ``meta``:
            axis 0 along the image rows (column index), axis 1 down the columns (row index),
            axis 2 the slices in the order of ``meta.source``. Values are class indices
            ``0 .. len(class_names) - 1`` (0 = background).
        meta: The meta :func:`medseg.io.read_dicom_series` returned for the source series.
        class_names: One name per class index, background first; each foreground class is a
            segment labelled with its name.
        segmentation_type: ``"BINARY"`` (default) or ``"LABELMAP"``.
        series_description: ``SeriesDescription`` of the SEG.
        model_name: Recorded as an algorithm parameter (e.g. the network's name).
        overwrite: Replace an existing file at ``path``.

    Returns:
        The written path.

    Raises:
        InputError: the image was not read from a DICOM series with patient geometry, the
            labels do not match the series or hold values outside the classes, ``path`` exists
            (without ``overwrite``) or is a source file, highdicom is missing, or the write
            failed (nothing is left at ``path`` then).
    """
    dest = Path(path)
    seg_type = str(segmentation_type).upper()
    if seg_type not in SEG_TYPES:
        raise ValueError(f"segmentation_type must be one of {SEG_TYPES}, got "
                         f"{segmentation_type!r}")
    if len(class_names) < 2:
        raise ValueError(f"class_names needs background and at least one class, got "
                         f"{list(class_names)!r}")
    refuse_source_overwrite(dest, meta.source)
    if dest.exists() and not overwrite:
        raise InputError("the DICOM SEG file already exists", dest,
                         "choose another output, or pass --overwrite to replace it")
    sources = _source_datasets(meta, dest)
    arr = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != meta.spatial_shape:
        raise InputError(f"label map shape {arr.shape} does not match the DICOM series "
                         f"{meta.spatial_shape} (columns, rows, slices)", dest,
                         "write the prediction of this series, on its own grid")
    n_classes = len(class_names)
    if arr.size and (arr.dtype.kind not in "iub" or arr.min() < 0 or arr.max() >= n_classes):
        raise InputError(f"label values must be class indices 0..{n_classes - 1}, got values "
                         f"in [{arr.min()}, {arr.max()}] ({arr.dtype})", dest,
                         "pass the arg-max label map and the model's class names")
    cols, rows = int(sources[0].Columns), int(sources[0].Rows)
    if (cols, rows, len(sources)) != arr.shape:
        raise InputError(f"the series holds {len(sources)} images of {cols}x{rows} (columns x "
                         f"rows) but the label map is {arr.shape}", meta.source[0],
                         "pass the meta of the series the labels were predicted on")
    hd = require_highdicom()
    pixels = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(
        np.uint8 if n_classes <= 256 else np.uint16)
    try:
        with warnings.catch_warnings():  # about the source's PatientName, not actionable here
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended "
                                    "person name.*")
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=pixels, segmentation_type=seg_type,
                segment_descriptions=_segment_descriptions(hd, class_names, model_name),
                series_instance_uid=hd.UID(), series_number=int(
                    sources[0].get("SeriesNumber", 0) or 0) + 1000,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg",
                manufacturer_model_name=model_name or "medseg",
                software_versions=_medseg_version(), device_serial_number="none",
                series_description=series_description[:64], content_label="MEDSEG",
                content_description="medseg prediction", omit_empty_frames=True)
        with atomic_path(dest, ".dcm") as tmp:
            seg.save_as(tmp, enforce_file_format=True)
    except InputError:
        raise
    except Exception as exc:  # highdicom refusing the source, or an OSError while writing
        raise InputError(f"could not write the DICOM SEG ({type(exc).__name__}: {exc}); "
                         "nothing was written", dest,
                         "check the source series and free disk space") from exc
    return dest


def _first(seq_owner: Dataset, keyword: str) -> Dataset | None:
    seq = seq_owner.get(keyword)
    return seq[0] if seq else None


def _frame_attr(seg: Dataset, i: int, seq: str) -> Dataset | None:
    """Item of functional group ``seq`` for frame ``i`` (per-frame first, then shared)."""
    per = seg.get("PerFrameFunctionalGroupsSequence")
    if per is not None and i < len(per):
        item = _first(per[i], seq)
        if item is not None:
            return item
    shared = seg.get("SharedFunctionalGroupsSequence")
    return _first(shared[0], seq) if shared else None


def _frame_source_uid(seg: Dataset, i: int) -> str | None:
    per = seg.get("PerFrameFunctionalGroupsSequence")
    deriv = _first(per[i], "DerivationImageSequence") if per is not None else None
    src = _first(deriv, "SourceImageSequence") if deriv is not None else None
    return str(src.ReferencedSOPInstanceUID) if src is not None else None


def referenced_instance_uids(path: PathLike) -> list[str]:
    """The SOP instance UIDs a SEG's ``ReferencedSeriesSequence`` lists, in file order.

    Raises:
        InputError: the file is not readable DICOM.
    """
    ds = _read_seg_dataset(Path(path))
    return [str(item.ReferencedSOPInstanceUID)
            for series in ds.get("ReferencedSeriesSequence", [])
            for item in series.get("ReferencedInstanceSequence", [])]


def _read_seg_dataset(p: Path) -> Dataset:
    check_regular_file(p)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
    except Exception as exc:
        raise reader_failure(exc, p, "DICOM SEG file", "re-export the segmentation") from exc
    if str(ds.get("Modality", "")) != "SEG":
        raise InputError(f"not a DICOM SEG object (Modality {ds.get('Modality', '?')!r})", p,
                         "pass a DICOM Segmentation file")
    return ds


def read_dicom_seg(path: PathLike, source: ImageMeta | None = None
                   ) -> tuple[np.ndarray, ImageMeta]:
    """Read a DICOM SEG (BINARY, FRACTIONAL thresholded by highdicom, or LABELMAP) as a label map.

    Segments must not overlap; each voxel gets the number of the segment that covers it (0 for
    none), so a SEG written by :func:`write_dicom_seg` gives back the class indices.

    Args:
        path: The SEG file.
        source: The meta of the segmented series as :func:`medseg.io.read_dicom_series`
            returned it: the labels then come back on exactly that grid and slice order (frames
            a producer left out read as 0). Without it the grid is the referenced series'
            (all its instances, in the order the SEG lists them, when the frames' positions
            agree with that order, as in SEGs from medseg and highdicom), else the one the
            frames' own positions span; slices ascend along the normal as medseg sorts them.
            (A SEG with a single frame in a multi-slice series gives the slice step as the
            slice spacing along the normal: one frame cannot show a gantry tilt's shear.)

    Returns:
        ``(labels (X, Y, Z) int64, meta)``: ``meta.affine`` RAS+ mm as for DICOM series,
        ``meta.extra["segment_labels"]`` ``{number: label}``, ``meta.extra["segmentation_type"]``
        and ``meta.extra["source_sop_instance_uids"]`` (one per slice).

    Raises:
        InputError: not a SEG, overlapping segments, frames that reference none of the given
            source's instances, a frame grid with gaps (pass ``source``), or highdicom missing.
    """
    p = Path(path)
    head = _read_seg_dataset(p)
    hd = require_highdicom()
    try:
        seg = hd.seg.segread(p)
    except Exception as exc:
        raise reader_failure(exc, p, "DICOM SEG file", "re-export the segmentation") from exc
    n_frames = int(seg.get("NumberOfFrames", 1) or 1)
    frame_uids = [_frame_source_uid(seg, i) for i in range(n_frames)]
    if source is not None:
        uids = _uids_of(source, p)
        if not set(uids) & {u for u in frame_uids if u}:
            raise InputError("the SEG references none of the given series' images", p,
                             "pass the series the segmentation was made on")
        affine, shape = source.affine.copy(), source.spatial_shape
        _check_frames_on_grid(seg, frame_uids, uids, affine, p)
    else:
        uids, affine = _grid_from_frames(seg, frame_uids, p)
        shape = (int(seg.Columns), int(seg.Rows), len(uids))
    try:
        # the frames' positions were checked against the grid above (producers such as dcmqi
        # omit SpatialLocationsPreserved, which highdicom would otherwise demand)
        pix = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False,
                                                ignore_spatial_locations=True,
                                                assert_missing_frames_are_empty=True)
    except Exception as exc:  # overlapping segments, inconsistent frames
        raise InputError(f"cannot read the SEG's frames as one label map "
                         f"({type(exc).__name__}: {exc})", p,
                         "segments must not overlap; convert the SEG with dcmqi "
                         "(segimage2itkimage) instead") from exc
    labels = np.ascontiguousarray(np.transpose(np.asarray(pix), (2, 1, 0))).astype(np.int64)
    if labels.shape != tuple(shape):
        raise InputError(f"the SEG's frames give a {labels.shape} label map, but the series "
                         f"is {tuple(shape)}", p, "pass the series the SEG was made on")
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", ""))
                for s in head.get("SegmentSequence", [])}
    meta = ImageMeta(affine=affine, spatial_shape=labels.shape, modality="SEG", source=(p,),
                     dtype="uint8" if labels.max(initial=0) < 256 else "uint16",
                     extra={"segment_labels": segments,
                            "segmentation_type": str(head.get("SegmentationType", "")),
                            "series_uid": str(head.get("SeriesInstanceUID", "")),
                            "source_sop_instance_uids": list(uids)})
    return labels, meta


def _check_frames_on_grid(seg: Dataset, frame_uids: list[str | None], uids: list[str],
                          affine: np.ndarray, p: Path) -> None:
    """Every frame lies on the slice of the source grid it references (within 0.01 mm).

    Raises:
        InputError: a frame's ImagePositionPatient or orientation differs from its slice's.
    """
    lps = np.linalg.inv(_LPS_TO_RAS) @ affine
    row_cos = lps[:3, 0] / np.linalg.norm(lps[:3, 0])
    col_cos = lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    index = {u: k for k, u in enumerate(uids)}
    for i, uid in enumerate(frame_uids):
        if uid not in index:
            continue
        pos_item = _frame_attr(seg, i, "PlanePositionSequence")
        orient = _frame_attr(seg, i, "PlaneOrientationSequence")
        if pos_item is None or orient is None:
            continue  # no position recorded: the reference alone places the frame
        pos = np.asarray([float(v) for v in pos_item.ImagePositionPatient])
        iop = np.asarray([float(v) for v in orient.ImageOrientationPatient])
        want = lps[:3, 3] + index[uid] * lps[:3, 2]
        if np.abs(pos - want).max() > 1e-2 or not np.allclose(iop, np.r_[row_cos, col_cos],
                                                               atol=1e-4):
            raise InputError(f"SEG frame {i + 1} does not lie on the slice of its source image "
                             f"(position {pos.round(3).tolist()} vs "
                             f"{want.round(3).tolist()} mm)", p,
                             "pass the series the SEG was made on, or resample the SEG")


def _uids_of(source: ImageMeta, where: Path) -> list[str]:
    uids = source.extra.get("sop_instance_uids")
    if uids:
        return list(uids)
    if not source.source:
        raise InputError("the source meta lists no DICOM files", where,
                         "pass the meta medseg.io.read_dicom_series returned")
    out = []
    for f in source.source:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            raise reader_failure(exc, f, "DICOM source file", "pass the source series") from exc
        _fill_sop_uids(ds, Path(f))
        out.append(str(ds.SOPInstanceUID))
    return out


def _grid_from_frames(seg: Dataset, frame_uids: list[str | None], p: Path
                      ) -> tuple[list[str], np.ndarray]:
    """Source UIDs in slice order and the RAS+ affine of the grid the SEG describes.

    The referenced instances (``ReferencedSeriesSequence``, which highdicom and medseg write in
    the order of the source images) give the whole series, frames left out included, when the
    frames' positions lie on one line in that order; otherwise the grid is rebuilt from the
    frames' own positions, sorted along the slice normal.

    Raises:
        InputError: no orientation or spacing, frames without position, or frame positions
            with gaps that no reference order explains (pass ``source``).
    """
    orient = _frame_attr(seg, 0, "PlaneOrientationSequence")
    measures = _frame_attr(seg, 0, "PixelMeasuresSequence")
    if orient is None or measures is None:
        raise InputError("the SEG has no plane orientation or pixel spacing", p,
                         "pass the source series (read_dicom_seg(path, source=meta))")
    iop = np.asarray([float(v) for v in orient.ImageOrientationPatient])
    ps = np.asarray([float(v) for v in measures.PixelSpacing])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    by_uid: dict[str, np.ndarray] = {}
    for i, uid in enumerate(frame_uids):
        pos_item = _frame_attr(seg, i, "PlanePositionSequence")
        if uid is None or pos_item is None:
            raise InputError(f"frame {i + 1} names no source image or position", p,
                             "pass the source series (read_dicom_seg(path, source=meta))")
        by_uid.setdefault(uid, np.asarray([float(v) for v in pos_item.ImagePositionPatient]))
    thick = measures.get("SpacingBetweenSlices") or measures.get("SliceThickness")
    refs = [str(item.ReferencedSOPInstanceUID)
            for series in seg.get("ReferencedSeriesSequence", [])
            for item in series.get("ReferencedInstanceSequence", [])]
    grid = _grid_from_references(refs, by_uid, normal, thick)
    if grid is None:
        grid = _grid_from_positions(by_uid, normal, thick, p)
    uids, origin, step = grid
    lps = np.eye(4)
    lps[:3, 0] = row_cos * ps[1]
    lps[:3, 1] = col_cos * ps[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return uids, _LPS_TO_RAS @ lps


def _on_line(by_uid: dict[str, np.ndarray], index: dict[str, int], origin: np.ndarray,
             step: np.ndarray) -> bool:
    tol = 0.01 * float(np.linalg.norm(step)) + 1e-3
    return all(float(np.abs(pos - (origin + index[u] * step)).max()) <= tol
               for u, pos in by_uid.items())


def _grid_from_references(refs: list[str], by_uid: dict[str, np.ndarray], normal: np.ndarray,
                          thick: Any) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """``(uids, origin, step)`` of the referenced series, or None when the frames do not lie
    at their references' places (another order, or one frame and no slice spacing)."""
    if not refs or len(set(refs)) != len(refs) or not set(by_uid) <= set(refs):
        return None
    index = {u: k for k, u in enumerate(refs)}
    present = sorted(by_uid, key=index.__getitem__)
    first, last = present[0], present[-1]
    if index[last] > index[first]:
        step = (by_uid[last] - by_uid[first]) / (index[last] - index[first])
    elif len(refs) == 1 or thick:
        # one frame: the slice spacing along the normal, in the references' (ascending) order
        step = normal * float(thick or 1.0)
    else:
        return None
    origin = by_uid[first] - index[first] * step
    if float(np.linalg.norm(step)) == 0.0 or not _on_line(by_uid, index, origin, step):
        return None
    if float(step @ normal) < 0:  # medseg's slice order ascends along the normal
        origin, step, refs = origin + (len(refs) - 1) * step, -step, refs[::-1]
    return refs, origin, step


def _grid_from_positions(by_uid: dict[str, np.ndarray], normal: np.ndarray, thick: Any,
                         p: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(uids, origin, step)`` from the frames' positions alone, sorted along the normal."""
    uids = sorted(by_uid, key=lambda u: float(by_uid[u] @ normal))
    pos = np.stack([by_uid[u] for u in uids])
    n = len(uids)
    if n == 1:
        return uids, pos[0], normal * float(thick or 1.0)
    step = (pos[-1] - pos[0]) / (n - 1)
    if not _on_line(by_uid, {u: k for k, u in enumerate(uids)}, pos[0], step):
        raise InputError("the SEG's frames do not cover evenly spaced slices (empty frames "
                         "left out?)", p,
                         "pass the source series (read_dicom_seg(path, source=meta))")
    return uids, pos[0], step

"""Which file formats medseg reads, how a path's format is recognised, and folder listings (E1)."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import InputError
from medseg.io.dicom import group_dicom_series
from medseg.io.dicom_files import PathLike, dicom_files_in, is_dicom_file, is_dicom_folder

__all__ = [
    "SUFFIX_FORMATS",
    "SUPPORTED_HINT",
    "detect_format",
    "dicom_files_in",
    "file_suffix",
    "is_dicom_file",
    "is_dicom_folder",
    "list_image_files",
]

#: Lower-case file name endings and the format each one means. Longest endings first.
SUFFIX_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".png": "png",
    ".tiff": "tiff",
    ".tif": "tiff",
    ".jpeg": "jpeg",
    ".jpg": "jpeg",
    ".dcm": "dicom",
}

SUPPORTED_HINT = (
    "use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), PNG, TIFF, JPEG, or DICOM "
    "(a .dcm file, a list of them, or a folder holding one series)"
)


def file_suffix(path: PathLike) -> str:
    """The recognised lower-case ending of ``path`` (``".nii.gz"``, ``".png"`` ...) or ``""``."""
    name = Path(path).name.lower()
    for suffix in SUFFIX_FORMATS:
        if name.endswith(suffix):
            return suffix
    return ""


def detect_format(path: PathLike) -> str:
    """The format of ``path``: ``"nifti"``, ``"nrrd"``, ``"png"``, ``"tiff"``, ``"jpeg"`` or
    ``"dicom"``.

    A folder is ``"dicom"`` when it holds DICOM files. A file with no known ending is ``"dicom"``
    when it carries the DICOM preamble (series exported without ``.dcm`` names are common).

    Raises:
        InputError: the path does not exist, or its format is not supported.
    """
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:  # name too long, NUL byte, permission denied
        raise InputError(f"cannot access the path ({exc})", p, "check the path") from None
    if not exists:
        raise InputError("file or folder not found", p, "check the path (and the working folder)")
    if is_dir:
        try:
            dicom = is_dicom_folder(p)
        except OSError as exc:
            raise InputError(f"cannot list the folder ({exc})", p, "check permissions") from None
        if dicom:
            return "dicom"
        raise InputError(
            "folder holds no DICOM files, so it cannot be read as one image",
            p,
            "pass an image file; medseg.io.list_image_files(folder) lists the images in it",
        )
    suffix = file_suffix(p)
    if suffix:
        return SUFFIX_FORMATS[suffix]
    if is_dicom_file(p):
        return "dicom"
    raise InputError(f"unsupported file type {p.suffix or '(no extension)'!r}", p, SUPPORTED_HINT)


def list_image_files(folder: PathLike) -> list[Path | tuple[Path, ...]]:
    """The images in ``folder``, each given in a form :func:`medseg.io.read_image` accepts.

    * a supported non-DICOM file (NIfTI, NRRD, PNG, TIFF, JPEG) -> its ``Path``;
    * a subfolder holding DICOM files -> the subfolder's ``Path`` (one entry per folder; reading it
      reports an error if it mixes several series);
    * DICOM files lying directly in ``folder`` -> one tuple of their paths per
      ``SeriesInstanceUID`` (files sorted by name; objects without pixels, e.g. SEG or RTSTRUCT,
      are left out).

    Entries are sorted by the name of their (first) path, so the order is stable across machines.
    Subfolders are not searched further.

    Raises:
        InputError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError("not a folder", root, "pass the folder that holds the images")
    entries: list[Path | tuple[Path, ...]] = []
    loose_dicom: list[Path] = []
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            if is_dicom_folder(p):
                entries.append(p)
        elif file_suffix(p) and SUFFIX_FORMATS[file_suffix(p)] != "dicom":
            entries.append(p)
        elif p.name.upper() != "DICOMDIR" and is_dicom_file(p):
            loose_dicom.append(p)
    if loose_dicom:
        for files in group_dicom_series(loose_dicom).values():
            entries.append(tuple(files))

    def first(e: Path | tuple[Path, ...]) -> str:
        return (e[0] if isinstance(e, tuple) else e).name

    return sorted(entries, key=first)

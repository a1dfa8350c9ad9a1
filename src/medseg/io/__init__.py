"""Reading and writing medical images with their geometry (E1).

Every reader returns ``(array, ImageMeta)``: images as float32 ``(C, *spatial)``, label maps as
int64 ``(*spatial)``, with ``ImageMeta.affine`` mapping voxel indices to RAS+ millimetres. Writers
keep that geometry, write atomically and refuse to overwrite the file an image was read from.

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), PNG, JPEG, TIFF, and DICOM
(single files, lists of files, series folders; see :mod:`medseg.io.dicom`).

Hostile or damaged files (:mod:`medseg.io.limits`): every reader refuses non-regular files (FIFOs,
devices, links to them) before opening them, checks the size its header declares before reading
any data, and refuses voxel spacings that are zero, negative, NaN or over 1000 mm, each with one
:class:`~medseg.errors.InputError` naming the file. The size limit is 4 GiB per image (voxels x
bytes per voxel as stored), set by the environment variable ``MEDSEG_MAX_IMAGE_BYTES`` (bytes,
or with a K/M/G/T suffix: ``MEDSEG_MAX_IMAGE_BYTES=16G``); Pillow's decompression-bomb limit
stays on. Paths listed in data tables are resolved by :mod:`medseg.io.paths`.
"""

from medseg.io.dicom import group_dicom_series, read_dicom_series, write_dicom_series
from medseg.io.files import detect_format, is_dicom_file, is_dicom_folder, list_image_files
from medseg.io.image import (
    check_finite,
    read_image,
    read_label,
    write_image,
    write_label,
)
from medseg.io.meta import ImageMeta
from medseg.io.orientation import reorient_like

__all__ = [
    "ImageMeta",
    "check_finite",
    "detect_format",
    "group_dicom_series",
    "is_dicom_file",
    "is_dicom_folder",
    "list_image_files",
    "read_dicom_series",
    "read_image",
    "read_label",
    "reorient_like",
    "write_dicom_series",
    "write_image",
    "write_label",
]

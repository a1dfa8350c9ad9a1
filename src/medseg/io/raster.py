"""2D raster files: PNG and JPEG through Pillow, TIFF through tifffile.

These formats store no patient geometry: arrays are ``(C, row, column)`` (TIFF stacks
``(C, page, row, column)``), the affine is the identity and the spacing 1.0 per axis.

Channels are kept as stored: greyscale -> 1 channel, RGB -> 3 channels (also when R = G = B, so a
file type always gives the same channel count; :func:`medseg.io.read_label` accepts such grey-as-RGB
masks), RGBA / LA -> the alpha channel is dropped. 16-bit PNG/TIFF keep their full range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medseg.errors import InputError
from medseg.io.meta import ImageMeta

_STACK_AXES = set("ZQIT")  # tifffile axis codes for pages of a stack (depth, unknown, sequence)
_CHANNEL_AXES = set("SC")  # samples per pixel, channels


def _meta(path: Path, arr: np.ndarray, dtype: str, extra: dict | None = None) -> ImageMeta:
    return ImageMeta(
        affine=np.eye(4),
        spatial_shape=arr.shape[1:],
        source=(path,),
        dtype=dtype,
        extra=extra or {},
    )


def _read_pillow(path: Path, labels: bool) -> tuple[np.ndarray, ImageMeta]:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                # a palette image's indices are its labels; read as an image it means its colours
                data = np.asarray(im) if labels else np.asarray(im.convert("RGB"))
                if data.ndim == 3 and labels:  # "PA": index + alpha
                    data = data[..., 0]
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                data = np.asarray(im.convert("RGB"))
            else:
                data = np.asarray(im)
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError ...
        raise InputError(
            f"cannot read image ({type(exc).__name__}: {exc}); it may be corrupt or truncated",
            path,
            "re-export the image",
        ) from exc
    if data.dtype == np.bool_:  # mode "1"
        data = data.astype(np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La"):
        data = data[..., :-1]  # drop alpha
    arr = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(arr), _meta(path, arr, arr.dtype.name, {"mode": mode})


def _read_tiff(path: Path) -> tuple[np.ndarray, ImageMeta]:
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            axes = series.axes
            data = series.asarray()
            photometric = tf.pages[0].photometric
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError ...
        raise InputError(
            f"cannot read TIFF ({type(exc).__name__}: {exc}); it may be corrupt or truncated",
            path,
            "re-export the image",
        ) from exc
    # drop singleton axes other than the image plane
    keep = [i for i, a in enumerate(axes) if data.shape[i] > 1 or a in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    chan = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES]
    stack = [i for i, a in enumerate(axes) if a in _STACK_AXES]
    other = [a for a in axes if a not in _CHANNEL_AXES | _STACK_AXES | set("YX")]
    if len(chan) > 1 or len(stack) > 1 or other:
        raise InputError(
            f"TIFF with axes {axes!r} and shape {data.shape} is not supported",
            path,
            "store a 2D image (optionally with colour samples) or a single stack of 2D pages",
        )
    order = chan + stack + [axes.index("Y"), axes.index("X")]
    arr = np.transpose(data, order)
    if not chan:
        arr = arr[None]
    elif str(getattr(photometric, "name", photometric)).upper() == "RGB" and arr.shape[0] == 4:
        arr = arr[:3]  # RGBA: drop alpha
    return np.ascontiguousarray(arr), _meta(path, arr, arr.dtype.name, {"tiff_axes": axes})


def read_raster(path: Path, fmt: str, labels: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read a PNG, JPEG or TIFF file in its stored dtype.

    Args:
        path: The file.
        fmt: ``"png"``, ``"jpeg"`` or ``"tiff"``.
        labels: For palette PNGs: True returns the palette indices (the usual way to store label
            maps), False the colours as RGB.

    Returns:
        ``(array (C, H, W) or (C, D, H, W) for TIFF stacks, meta)`` with identity affine.

    Raises:
        InputError: the file cannot be decoded or has an unsupported layout.
    """
    if fmt == "tiff":
        return _read_tiff(path)
    return _read_pillow(path, labels)


def write_raster(tmp: Path, data: np.ndarray, fmt: str, dest: Path) -> None:
    """Write ``data`` ``(C, H, W)`` (already in its on-disk dtype) as PNG or TIFF.

    PNG: 1 channel as 8- or 16-bit greyscale, 2 as grey + alpha, 3 as RGB, 4 as RGBA (8-bit for
    the colour ones). TIFF: any numeric dtype; 3 uint8/uint16 channels as RGB, other channel
    counts planar; a single-channel 3D array ``(1, D, H, W)`` as a stack of pages.

    Raises:
        InputError: the format cannot store this array (``dest`` is named in the message).
    """
    c = data.shape[0]
    nd = data.ndim - 1
    if fmt == "jpeg":
        raise InputError(
            "JPEG is lossy and is not written by medseg",
            dest,
            "write .png (lossless) or .tif instead",
        )
    if fmt == "png":
        if nd != 2:
            raise InputError(
                f"PNG stores 2D images, got spatial shape {data.shape[1:]}",
                dest,
                "write .nii.gz or .nrrd for volumes",
            )
        ok = (c == 1 and data.dtype in (np.uint8, np.uint16)) or (
            c in (2, 3, 4) and data.dtype == np.uint8
        )
        if not ok:
            raise InputError(
                f"PNG cannot store {c} channel(s) of {data.dtype.name}",
                dest,
                "pass dtype='uint8' (or 'uint16' for one channel; values are rounded), or write "
                ".tif / .nii.gz for other types",
            )
        img = data[0] if c == 1 else np.moveaxis(data, 0, -1)
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
        return
    # TIFF
    if nd == 3:
        if c != 1:
            raise InputError(
                "multi-channel TIFF stacks are not written by medseg",
                dest,
                "write .nii.gz or .nrrd for multi-channel volumes",
            )
        tifffile.imwrite(tmp, np.ascontiguousarray(data[0]), photometric="minisblack")
    elif nd != 2:
        raise InputError(f"cannot write a {nd}D array as TIFF", dest, "write .nii.gz instead")
    elif c == 1:
        tifffile.imwrite(tmp, np.ascontiguousarray(data[0]), photometric="minisblack")
    elif c == 3 and data.dtype in (np.uint8, np.uint16):
        tifffile.imwrite(tmp, np.ascontiguousarray(np.moveaxis(data, 0, -1)), photometric="rgb")
    else:
        tifffile.imwrite(
            tmp, np.ascontiguousarray(data), photometric="minisblack", planarconfig="separate"
        )

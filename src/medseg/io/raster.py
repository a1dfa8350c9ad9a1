"""2D raster files: PNG and JPEG through Pillow, TIFF through tifffile.

These formats store no patient geometry: arrays are ``(C, row, column)`` (TIFF stacks
``(C, page, row, column)``), the affine is the identity and the spacing 1.0 per axis.

Channels are kept as stored: greyscale -> 1 channel, RGB -> 3 channels (also when R = G = B, so a
file type always gives the same channel count; :func:`medseg.io.read_label` accepts such grey-as-RGB
masks), RGBA / LA -> the alpha channel is dropped. 16-bit PNG/TIFF keep their full range.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from medseg.errors import InputError
from medseg.io.limits import check_declared_size, check_regular_file, reader_failure
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


#: Bytes per pixel of the array Pillow gives for each mode (others: 4 per band).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "LA": 2,
               "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4,
               "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}
_REEXPORT = "re-export the image"


def _check_png_chunks(path: Path) -> None:
    """Refuse a PNG chunk whose declared length runs past the end of the file.

    Pillow reads the rest of an IDAT chunk in one call (Python allocates the declared length
    first): a 144-byte PNG declaring a 2 GB chunk allocated 2 GB (found by the fuzz campaign).
    Only the 8-byte chunk heads are read.

    Raises:
        InputError: a chunk longer than what is left of the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return  # not a PNG: Pillow's format check reports it
        pos = 8
        while pos + 8 <= size:
            head = fh.read(8)
            if len(head) < 8:
                return
            length = int.from_bytes(head[:4], "big")
            if pos + 12 + length > size:
                raise InputError(
                    f"cannot read image (PNG chunk {head[4:8]!r} at byte {pos} declares {length} "
                    f"bytes, past the end of the {size}-byte file); it may be corrupt or truncated",
                    path,
                    _REEXPORT,
                )
            if head[4:8] == b"IEND":
                return
            pos += 12 + length
            fh.seek(pos)


#: What Pillow may decode for each medseg format (a file is never parsed as another format).
_PILLOW_FORMATS = {"png": ["PNG"], "jpeg": ["JPEG"]}


def _read_pillow(path: Path, labels: bool, fmt: str = "png") -> tuple[np.ndarray, ImageMeta]:
    check_regular_file(path)
    try:
        _check_png_chunks(path)
        with warnings.catch_warnings():
            # Pillow's decompression-bomb check stays on; its warning is an error here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_PILLOW_FORMATS.get(fmt, ["PNG", "JPEG"])) as im:
                mode = im.mode
                per_pixel = _MODE_BYTES.get(mode, 4 * len(im.getbands()))
                if mode in ("P", "PA") and not labels:
                    per_pixel = 3
                check_declared_size(path, (im.size[1], im.size[0]), per_pixel)
                im.load()
                if mode in ("P", "PA"):
                    # a palette image's indices are its labels; read as an image it means its
                    # colours
                    data = np.asarray(im) if labels else np.asarray(im.convert("RGB"))
                    if data.ndim == 3 and labels:  # "PA": index + alpha
                        data = data[..., 0]
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    data = np.asarray(im.convert("RGB"))
                else:
                    data = np.asarray(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"refused by Pillow's decompression-bomb check ({exc})",
            path,
            "if the image is genuine, split or downsample it, or store it as TIFF/NIfTI",
        ) from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError ...
        raise reader_failure(exc, path, "image", _REEXPORT) from exc
    if data.dtype == np.bool_:  # mode "1"
        data = data.astype(np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La"):
        data = data[..., :-1]  # drop alpha
    arr = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return np.ascontiguousarray(arr), _meta(path, arr, arr.dtype.name, {"mode": mode})


def _check_strips(path: Path, series: tifffile.TiffPageSeries) -> None:
    """Refuse strips or tiles that run past the end of the file before tifffile reads them.

    tifffile reads a strip's declared byte count in one call, and Python allocates that many
    bytes first: a 331-byte file declaring a 4 GB strip allocated 4 GB (found by the fuzz
    campaign).

    Raises:
        InputError: a strip or tile lies (partly) beyond the end of the file.
    """
    size = path.stat().st_size
    for page in series.pages:
        if page is None:
            continue
        for off, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if int(off) + int(count) > size:
                raise InputError(
                    f"cannot read TIFF (a strip of {int(count)} bytes at offset {int(off)} runs "
                    f"past the end of the {size}-byte file); it may be corrupt or truncated",
                    path,
                    _REEXPORT,
                )


def _read_tiff(path: Path) -> tuple[np.ndarray, ImageMeta]:
    check_regular_file(path)
    try:
        with tifffile.TiffFile(path) as tf:
            # index every page first: tifffile then stops at a circular IFD chain, which its
            # series detection alone would follow forever (found by the fuzz campaign)
            if len(tf.pages) == 0:
                raise InputError("cannot read TIFF (it holds no image pages); it may be corrupt "
                                 "or truncated", path, _REEXPORT)
            series = tf.series[0]
            axes = series.axes
            check_declared_size(path, series.shape, np.dtype(series.dtype).itemsize)
            _check_strips(path, series)
            data = series.asarray()
            photometric = tf.pages[0].photometric
    except InputError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError ...
        raise reader_failure(exc, path, "TIFF", _REEXPORT) from exc
    if "Y" not in axes or "X" not in axes or data.ndim != len(axes):
        raise InputError(
            f"TIFF with axes {axes!r} and shape {data.shape} has no 2D image plane",
            path,
            "store a 2D image (optionally with colour samples) or a single stack of 2D pages",
        )
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
    return _read_pillow(path, labels, fmt)


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

"""The inputs the fuzz campaign found, replayed in the sandbox (time limit and memory cap).

Each one failed before its fix: an escape other than ``MedsegError``, a hang, or an allocation far
beyond the file's size.
"""

from __future__ import annotations

import base64
import gzip
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import check, workdir

from medseg.io import ImageMeta, write_dicom_series

# tifffile followed a damaged IFD chain forever in its series detection (medseg now indexes the
# pages first, which stops at the loop)
LOOPING_TIFF = (
    "eNrz9NRi4GBgYOBnYGBkYWAEsgSAmBGJzcTIDGaDVDHUO+xtWhjIOjvaK+XEE69Hx5jcT53ROqcg4GkfywxVB8JsSGw+"
    "RiYGESB9CIhFkcSlGFnB9DMgloay3wGxBpIaQ6BeHiD9DYidkNzkjMR2gbGBhCuUDSEYGKqViu33nYlSslKINjTTUTA0"
    "i61lQAeMaLgkMy0tLTMnVa+gEk0l0+NXa21Ncw+m6tWdqJ8x6V7MIR6DufdVe6/tTjujs2NJ1JWZP/WTj++rvL/gvnDE"
    "gwDzNWrvb5rNfLHSXqjmdi8P1zXD3cn3uzbV+XkJnSvv1eCby8ih7qprGP9K6ch5hv74qVfff/VZEi1x297yl9f27kO7"
    "MizvPLsifbH7n4GKhruAWHD5mg5xs0PxnhuWm69aNGut8fVLguJnb+0T+5mouOlrSLL4k2mn2lXz+c9yprgUVq0vCAx3"
    "k+B+crKF6fRNbbNsS/mwSTmzXkyNnsv/OJHFhfVmc2zN3ztpqw10fhV5JXu8etAR+knl0spLsRqPS08Ub3jYuuGg4C1u"
    "nhWypgudc5pu28aWflwDAEGMmx4="
)


# a 331-byte deflate TIFF declaring a 4 GB strip: tifffile asked Python to read 4 GB at once
# (medseg now refuses strips that run past the end of the file)
HUGE_STRIP_TIFF = (
    "eNrz9NRi4GBgYOBnYGBkYWAEsliAmBGJzcTIDGYrADEzlA3SwQZlgzAfIxODEJA+BMSCUL0gQhRJjRiSmeJQ9n8gkGL8"
    "/x/EfgLE0oysYPE3QKyBpNcQaD4PkP4CxMFQcWYGCKhWKs5ILEhVslKINtFRMImtZUAHjGi4JDMtLS0zJ1WvoJKhYg6j"
    "A8P+/79Pidv/fe9rX6fdaudUssGukincnvWRiH1QHpN9VpmO/dyTTPY/5Krtpx1zsP+wPdb2ToW43ZNObnu+y4H2AhG9"
    "tsnHJC8CAK7xNLM="
)


# a NIfTI-2 header flagging extensions with vox_offset 0: nibabel read extensions to the end of
# the file, the first declaring 2 GB (medseg now walks the extension heads first)
EXTENSION_NIFTI2 = (
    "eNqTYWJgyNM2YuDlkuISYFBgYGGAACYozYzGh9GMOGj84IP9rJkg8NL+7BkQeGMPEWdxAEsyDAHARIYemKcJqUMNFEIA"
    "HGhku2vTBFZ7ZzEjOyAG0pvsLs+OA9G2VZel7TdNaLXjjvSwvzz7nt2ceyUgdbZimwSA/Di75ea29tyRJ+ws9mYC1bHa"
    "3f+iZl91ebZdflWw/Zx7X+wYGBrsAWEAPcs="
)
# a 144-byte PNG whose IDAT chunk declares 2 GB: Pillow read the rest of the chunk in one call
LONG_CHUNK_PNG = (
    "eNrrDPBz5+WS4mJgYOD19HAJAtJsQMzCwQQkldJuitQ3MDB4ujiGVMxh9GHY/J/R59it5pdb3/2+sYujo9a45NQnKaa+"
    "iF3idx8HvVvAqHD/nKI/9yMNBrUd1z0Of9Pmrbslaun147ZuxXJGlhtGMzaylnLf4QtbqsMme6vr5+n/KtpLg5n+Am1i"
    "8HT1c1nnlNAEAD9sNMc="
)


def _unpack(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def _npz(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def _dicom_with_lying_length(d: Path) -> Path:
    """A series folder whose first file is 8 bytes declaring a 4 GB element (pydicom read the
    declared length in one call, allocating 4 GB)."""
    folder = d / "series"
    write_dicom_series(folder, np.zeros((4, 4, 2), np.float32),
                       ImageMeta.from_spacing((1.0, 1.0, 2.0), (4, 4, 2)))
    (folder / "IM0000.dcm").write_bytes(b"\x00\x00\x00\x00\x00\x00\xff\xff")
    return folder


def _dicom_with_unknown_vr(d: Path) -> Path:
    """A series whose Modality element has the unknown VR 'KS' (pydicom raised
    NotImplementedError while medseg grouped the files by series)."""
    folder = d / "series"
    files = write_dicom_series(folder, np.zeros((4, 4, 2), np.float32),
                               ImageMeta.from_spacing((1.0, 1.0, 2.0), (4, 4, 2)))
    raw = files[0].read_bytes()
    assert b"\x08\x00\x60\x00CS" in raw
    files[0].write_bytes(raw.replace(b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00KS"))
    return folder


CASES = {
    "nifti2_extensions_to_eof": ("nifti", lambda d: _put(d / "ext.nii",
                                                         _unpack(EXTENSION_NIFTI2))),
    "nifti2_extensions_to_eof_gz": ("nifti", lambda d: _put(d / "ext.nii.gz", gzip.compress(
        _unpack(EXTENSION_NIFTI2)))),
    "png_2gb_chunk": ("png", lambda d: _put(d / "chunk.png", _unpack(LONG_CHUNK_PNG))),
    "dicom_unknown_vr": ("dicom", _dicom_with_unknown_vr),
    "tiff_loop": ("tiff", lambda d: _put(d / "loop.tif",
                                         _unpack(LOOPING_TIFF))),
    "tiff_4gb_strip": ("tiff", lambda d: _put(d / "strip.tif",
                                              _unpack(HUGE_STRIP_TIFF))),
    "dicom_4gb_length": ("dicom", _dicom_with_lying_length),
    "npz_empty_images": ("npz", lambda d: _put(d / "a.npz", _npz(
        train_images=np.zeros((3, 0, 0), np.uint8), train_labels=np.arange(3)))),
    "npz_split_shapes": ("npz", lambda d: _put(d / "b.npz", _npz(
        train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.arange(2),
        test_images=np.zeros((1, 5, 4), np.uint8), test_labels=np.arange(1)))),
}


def _put(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_found_by_fuzzing(sandbox, name):
    reader, make = CASES[name]
    with workdir() as d:
        out = check(sandbox, reader, make(Path(d)))
    assert out.status == "medseg"

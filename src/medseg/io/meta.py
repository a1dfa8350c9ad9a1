"""Geometry and provenance carried beside every array (E1)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass
class ImageMeta:
    """Where an array's voxels lie in the world, and what the array is.

    Conventions (the same for every reader and writer):

    * arrays are channel-first ``(C, *spatial)`` with the spatial axes in the file's own index
      order (NIfTI ``i, j, k``; DICOM series ``column, row, slice``; PNG ``row, column``);
    * ``affine`` is a ``(4, 4)`` matrix mapping a voxel index ``(i, j, k, 1)`` to RAS+ world
      coordinates in millimetres (the NIfTI convention; DICOM's LPS is converted on read). For 2D
      images the unused third axis is the identity;
    * ``spacing`` is the voxel size in mm along each spatial axis, in array order (the norms of the
      affine's columns). For PNG/TIFF with no physical size it is 1.0 per axis.

    Attributes:
        affine: ``(4, 4)`` voxel-to-world (RAS+, mm).
        spatial_shape: Shape of the spatial axes.
        modality: ``"CT"``, ``"MR"``, ``"US"``, ``"XR"`` ... or ``None`` when unknown.
        source: The file(s) read, for error messages and provenance.
        dtype: The on-disk dtype name, so writers can keep it for label maps.
        extra: Reader-specific details (e.g. DICOM ``SeriesInstanceUID``).
    """

    affine: np.ndarray
    spatial_shape: tuple[int, ...]
    modality: str | None = None
    source: tuple[Path, ...] = ()
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be (4, 4), got {self.affine.shape}")
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.source = tuple(Path(p) for p in self.source)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.spatial_shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per spatial axis, in array order."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return tuple(float(s) for s in norms[: self.ndim])

    @property
    def origin(self) -> tuple[float, ...]:
        """World (RAS+, mm) position of voxel 0."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """``(3, 3)`` unit direction cosines (columns = array axes)."""
        a = self.affine[:3, :3]
        return a / np.linalg.norm(a, axis=0, keepdims=True)

    @property
    def name(self) -> str:
        """A short case name derived from the first source file."""
        if not self.source:
            return "image"
        n = self.source[0].name
        for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".dcm", ".mha"):
            if n.lower().endswith(ext):
                return n[: -len(ext)]
        return n

    def with_spacing(self, new_spacing: tuple[float, ...], new_shape: tuple[int, ...]) -> ImageMeta:
        """The meta of a resampled grid covering the same field of view.

        The new voxel centres are placed so the grid's outer edges coincide with the old one's.
        """
        old = np.asarray(self.spacing)
        new = np.asarray(new_spacing, dtype=np.float64)
        aff = self.affine.copy()
        d = self.ndim
        scale = new / old
        aff[:3, :d] = self.affine[:3, :d] * scale[None, :]
        # voxel 0 centre moves by (scale - 1) / 2 old voxels along each axis
        shift = self.affine[:3, :d] @ ((scale - 1.0) / 2.0)
        aff[:3, 3] = self.affine[:3, 3] + shift
        return replace(self, affine=aff, spatial_shape=tuple(new_shape))

    @staticmethod
    def from_spacing(
        spacing: tuple[float, ...], shape: tuple[int, ...], modality: str | None = None
    ) -> ImageMeta:
        """A meta with an axis-aligned affine of the given spacing and zero origin."""
        aff = np.eye(4)
        for i, s in enumerate(spacing):
            aff[i, i] = float(s)
        return ImageMeta(affine=aff, spatial_shape=tuple(shape), modality=modality)

    def same_geometry(self, other: ImageMeta, atol: float = 1e-3) -> bool:
        """True when both describe the same voxel grid (shape and affine within ``atol`` mm)."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol)
        )

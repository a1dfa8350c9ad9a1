"""Datasets (E2), validation, preprocessing plans and patch sampling (T6).

Data flows: :func:`open_dataset` -> :func:`validate_dataset` -> :func:`make_plan` ->
:func:`preprocess_image` / :func:`preprocess_label` -> :class:`PatchSampler` (training) or
:func:`full_image_batches` (validation); :func:`restore_probabilities` maps predictions back.
"""

from medseg.data.classification import (
    MISSING,
    ClsDataset,
    ClsItem,
    load_classification_csv,
    load_images,
    load_medmnist_npz,
    npz_images_to_float,
    open_classification,
)
from medseg.data.convert import FillReport, fill_outline_masks
from medseg.data.layouts import (
    SegCase,
    SegDataset,
    load_image_mask_folders,
    load_msd_folder,
    modality_of_channel,
    open_dataset,
)
from medseg.data.preprocess import (
    ChannelNorm,
    PreprocessPlan,
    channel_affine,
    from_raw,
    make_plan,
    normalize_channel,
    preprocess_image,
    preprocess_label,
    restore_probabilities,
    to_raw,
)
from medseg.data.sampler import PatchBatchLoader, PatchSampler, full_image_batches
from medseg.data.validate import (
    ChannelStats,
    DatasetSummary,
    LoadedCase,
    effective_spatial_dims,
    squeeze_to_2d,
    validate_dataset,
)

__all__ = [
    "MISSING",
    "ClsDataset",
    "ClsItem",
    "load_classification_csv",
    "load_images",
    "load_medmnist_npz",
    "npz_images_to_float",
    "open_classification",
    "ChannelNorm",
    "ChannelStats",
    "DatasetSummary",
    "FillReport",
    "LoadedCase",
    "PatchBatchLoader",
    "PatchSampler",
    "PreprocessPlan",
    "SegCase",
    "SegDataset",
    "effective_spatial_dims",
    "fill_outline_masks",
    "full_image_batches",
    "load_image_mask_folders",
    "load_msd_folder",
    "make_plan",
    "modality_of_channel",
    "normalize_channel",
    "channel_affine",
    "from_raw",
    "to_raw",
    "open_dataset",
    "preprocess_image",
    "preprocess_label",
    "restore_probabilities",
    "squeeze_to_2d",
    "validate_dataset",
]

"""Whole-image probabilities from a trained model: sliding window + optional flip TTA.

:func:`predict_probs` puts the model in eval mode, runs under ``torch.inference_mode()`` (and
float16 autocast on CUDA only), predicts windows of ``roi_size`` and stitches them. Each window's
output is turned into probabilities *before* stitching, so the stitched field is a weighted
average of distributions and stays on the simplex; with ``tta=True`` each window's
probabilities are first averaged over flips (:class:`~medseg.inference.tta.FlipTTA`).

:class:`Predictor` holds the same settings as data (e.g. loaded from a YAML config).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from medseg.inference.sliding_window import sliding_window_inference
from medseg.inference.tta import ACTIVATIONS, FlipTTA, apply_activation


class _Logits:
    """Calls the model and keeps the full-resolution output of a list/tuple output."""

    def __init__(self, model: nn.Module, autocast: bool):
        self.model = model
        self.autocast = autocast

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast(device_type="cuda", dtype=torch.float16)
            if self.autocast
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(x)
        if isinstance(out, list | tuple):
            out = out[0]
        return out.float()


class _Probs:
    def __init__(self, logits: _Logits, activation: str):
        self.logits = logits
        self.activation = activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_activation(self.logits(x), self.activation)


def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    device: torch.device | str | None = None,
    mode: str = "gaussian",
    tta_axes: Sequence[int] | None = None,
    activation: str = "softmax",
    output_device: torch.device | str | None = None,
    progress: bool = False,
    sigma_scale: float | Sequence[float] = 0.125,
) -> torch.Tensor:
    """Probabilities of a segmentation model over a whole image or volume.

    Args:
        model: Maps ``(n, C, *roi)`` to logits ``(n, C_out, *roi)`` (a list output, as from deep
            supervision, contributes its first, full-resolution entry). Its train/eval mode is
            restored afterwards.
        image: ``(B, C, *spatial)``; integer images are converted to float32.
        roi_size: Window size, an int or one per spatial axis.
        overlap: Window overlap fraction in ``[0, 1)``.
        sw_batch_size: Windows per forward pass.
        tta: Average each window over all flips of ``tta_axes``.
        device: Where the model runs; the model is moved there. ``None``: the device of the
            model's parameters.
        mode: Window weighting, ``"gaussian"`` or ``"constant"``.
        tta_axes: Spatial axes flipped by TTA (``None``: all).
        activation: ``"softmax"`` (T3), ``"sigmoid"`` (binary/multi-label) or ``"none"``.
        output_device: Where the result is accumulated (default: ``image.device``).
        progress: Print a window counter to stderr.
        sigma_scale: Standard deviation of the Gaussian window weighting as a fraction of
            ``roi_size`` (one value or one per spatial axis; ``inference.sigma_scale`` of the
            config); unused with ``mode="constant"``.

    Returns:
        ``(B, C_out, *spatial)`` float32 probabilities on ``output_device``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else image.device
    device = torch.device(device)
    model.to(device)
    if not image.is_floating_point():
        image = image.float()
    logits = _Logits(model, autocast=device.type == "cuda")
    predictor = (
        FlipTTA(logits, tta_axes, activation) if tta else _Probs(logits, activation)
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return sliding_window_inference(
                image,
                predictor,
                roi_size,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                mode=mode,
                sigma_scale=sigma_scale,
                device=device,
                output_device=output_device,
                progress=progress,
            )
    finally:
        model.train(was_training)


@dataclass
class Predictor:
    """Inference settings as data; :meth:`predict` calls :func:`predict_probs` with them.

    Attributes:
        roi_size: Window size (int or one per spatial axis), usually the training patch size.
        overlap: Window overlap fraction in ``[0, 1)``.
        sw_batch_size: Windows per forward pass.
        tta: Flip test-time augmentation.
        tta_axes: Spatial axes flipped by TTA (``None``: all).
        mode: ``"gaussian"`` or ``"constant"`` window weighting.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"none"``.
        device: Where the model runs (``None``: where it is).
        output_device: Where the result is accumulated (``None``: the image's device).
        progress: Print a window counter.
        sigma_scale: Gaussian window weighting's standard deviation as a fraction of
            ``roi_size`` (one value or one per spatial axis).
    """

    roi_size: int | tuple[int, ...]
    overlap: float = 0.5
    sw_batch_size: int = 4
    tta: bool = False
    tta_axes: tuple[int, ...] | None = None
    mode: str = "gaussian"
    activation: str = "softmax"
    device: str | None = None
    output_device: str | None = None
    progress: bool = False
    sigma_scale: float | tuple[float, ...] = 0.125

    def predict(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` -> ``(B, C_out, *spatial)`` probabilities."""
        return predict_probs(
            model,
            image,
            self.roi_size,
            overlap=self.overlap,
            sw_batch_size=self.sw_batch_size,
            tta=self.tta,
            device=self.device,
            mode=self.mode,
            tta_axes=self.tta_axes,
            activation=self.activation,
            output_device=self.output_device,
            progress=self.progress,
            sigma_scale=self.sigma_scale,
        )

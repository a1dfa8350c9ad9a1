"""Whole-image probabilities from a trained model: sliding window + optional flip TTA.

:func:`predict_probs` puts the model in eval mode, runs under ``torch.inference_mode()`` (in
the ``precision`` asked for: fp32, or bf16 / fp16 autocast, with the logits cast back to float32
before the activation and the stitching; optionally channels-last and ``torch.compile``,
:mod:`medseg.inference.precision`), predicts windows of ``roi_size`` and stitches them. Each
window's output is turned into probabilities *before* stitching, so the stitched field is a weighted
average of distributions and stays on the simplex; with ``tta=True`` each window's
probabilities are first averaged over flips (:class:`~medseg.inference.tta.FlipTTA`).

:class:`Predictor` holds the same settings as data (e.g. loaded from a YAML config).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from medseg.inference.precision import (
    autocast,
    maybe_compile,
    memory_format,
    to_channels_last,
)
from medseg.inference.sliding_window import sliding_window_inference
from medseg.inference.tta import ACTIVATIONS, FlipTTA, apply_activation
from medseg.layers.norm import channels_last_norms


class _Logits:
    """Calls the model (in ``precision``, optionally channels-last) and returns float32 logits;
    a list/tuple output contributes its full-resolution first entry."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], precision: str,
                 device: torch.device, channels_last: bool = False):
        self.model = model
        self.precision = precision
        self.device = device
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = to_channels_last(x)
        with autocast(self.precision, self.device):
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
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    background: torch.Tensor | None = None,
    stats: dict[str, int] | None = None,
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
        precision: Resolved precision of the network call, ``"fp32"``, ``"bf16"`` or
            ``"fp16"`` (autocast; resolve ``auto`` with
            :func:`medseg.training.device.resolve_precision`). Activation and stitching stay
            float32.
        channels_last: Run the network in the channels-last(-3d) layout (the weights' layout
            is restored afterwards).
        compile: Run the network through ``torch.compile`` (eager with a warning where the
            compiler fails).
        background: Optional ``(B, *spatial)`` boolean mask of background voxels
            (:func:`medseg.inference.background.background_voxels`): a window lying entirely
            in it is not predicted and counts as background with probability 1 (softmax) or
            as all labels absent (sigmoid). Needs ``activation != "none"``.
        stats: If given, receives the window counts ``{"windows", "skipped"}``.

    Returns:
        ``(B, C_out, *spatial)`` float32 probabilities on ``output_device``.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if background is not None and activation == "none":
        raise ValueError("background skipping needs probabilities (softmax or sigmoid), not "
                         "activation='none'")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else image.device
    device = torch.device(device)
    model.to(device)
    if not image.is_floating_point():
        image = image.float()
    spatial_dims = image.ndim - 2
    channels_last = channels_last and spatial_dims in (2, 3)
    net = maybe_compile(model, compile, "prediction")
    logits = _Logits(net, precision, device, channels_last)
    predictor = (
        FlipTTA(logits, tta_axes, activation) if tta else _Probs(logits, activation)
    )
    skip_value = None
    if background is not None:
        c_out = _num_outputs(model)
        skip_value = torch.zeros(c_out)
        if activation == "softmax":
            skip_value[0] = 1.0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), channels_last_layout([model], spatial_dims, channels_last):
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
                background=background,
                skip_value=skip_value,
                stats=stats,
            )
    finally:
        model.train(was_training)


@contextmanager
def channels_last_layout(models: Sequence[nn.Module], spatial_dims: int, enabled: bool = True
                         ) -> Iterator[None]:
    """Inside: the 4D / 5D weights of ``models`` in the channels-last(-3d) layout and instance
    normalisation keeping that layout (:func:`~medseg.layers.norm.channels_last_norms`); on exit
    the very tensors the conversion replaced are put back.

    Putting back, not converting back: the latter would leave other strides on size-1 axes (a
    1-input-channel or 1x1 weight), on which oneDNN may pick another kernel, so a model in
    training would not continue bit-exactly. A model whose weights are already channels-last
    is left as it is. The inputs are the caller's to convert (:func:`to_channels_last`).

    Args:
        models: The networks (e.g. the members of an ensemble).
        spatial_dims: 2 or 3; any other value (or ``enabled=False``) changes nothing.
        enabled: Whether to convert at all.
    """
    enabled = enabled and spatial_dims in (2, 3)
    originals: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        if enabled:
            fmt = memory_format(spatial_dims)
            for m in models:
                if _weights_in(m, fmt):
                    continue
                originals += [(t, t.data) for t in (*m.parameters(), *m.buffers())
                              if t.ndim in (4, 5)]
                m.to(memory_format=fmt)
        with channels_last_norms(enabled):
            yield
    finally:
        for t, data in originals:
            t.data = data


def _weights_in(model: nn.Module, fmt: torch.memory_format) -> bool:
    """Whether every 4D / 5D weight of ``model`` is already in layout ``fmt``.

    Every one, not the first: a first convolution with one input channel has a weight that is
    contiguous in both layouts, and stopping there left the rest of the network channels-first.
    """
    nd = 4 if fmt == torch.channels_last else 5
    return all(p.is_contiguous(memory_format=fmt) for p in model.parameters() if p.ndim == nd)


def _num_outputs(model: nn.Module) -> int:
    """Output channels of a network: its ``num_classes`` or ``out_channels`` attribute."""
    for name in ("num_classes", "out_channels"):
        v = getattr(model, name, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"background skipping needs the number of output channels, but "
                     f"{type(model).__name__} has no num_classes / out_channels attribute")


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
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (resolved) network precision.
        channels_last: Channels-last layout for the network call.
        compile: ``torch.compile`` the network (eager fall back).
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
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

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
            precision=self.precision,
            channels_last=self.channels_last,
            compile=self.compile,
        )

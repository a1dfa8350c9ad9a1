"""A heteroscedastic (variance) head for any registered network, one mechanism for all.

Every registered network names the layers that produce its logits in the class attribute
``head_attrs`` (the 1x1 convolution of the segmentation networks, the final linear layer of the
classifiers; a ``ModuleList`` of them for deep-supervision heads). :func:`add_variance_head`
replaces each such layer ``h`` by a pair ``[h(f), v(f)]`` concatenated along the channel axis,
where ``v`` is a fresh layer of the same type and shape. Whatever a network does after its head
(cropping padded inputs, bilinear upsampling in DeepLabV3+, averaging UNet++'s heads in eval
mode) acts on each channel separately, so it treats the log-variance channels exactly as the
logit channels; :class:`VarianceHead` splits the network's output back into the two halves.

``log_var`` has one channel per logit channel, the same shape as the logits, and is the log of
the variance of the logits (for the heteroscedastic classification loss of Kendall & Gal 2017,
sample ``logits + exp(log_var / 2) * eps``). The variance layer is zero-initialised (weights and
bias), so at the start ``log_var = 0``: variance 1 everywhere; its parameters still receive
gradients (``d log_var / d bias = 1``).

    >>> net = add_variance_head(create_model("unet", channels=(8, 16)))
    >>> logits, log_var = net(torch.zeros(1, 1, 32, 32))   # both (1, 2, 32, 32)
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

Output = torch.Tensor | list[torch.Tensor]


class MeanAndLogVar(nn.Module):
    """One logit layer and its zero-initialised log-variance twin, outputs concatenated.

    Args:
        head: A convolution or linear layer producing ``K`` logit channels.

    Shapes:
        ``(B, C, *spatial)`` -> ``(B, 2K, *spatial)`` (convolution) or ``(B, C)`` -> ``(B, 2K)``
        (linear): logits first, then the log-variances.
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        if not isinstance(head, nn.modules.conv._ConvNd | nn.Linear):
            raise TypeError(
                f"a variance head needs a convolution or linear logit layer, got "
                f"{type(head).__name__}"
            )
        self.head = head
        self.log_var = copy.deepcopy(head)
        with torch.no_grad():
            for p in self.log_var.parameters():
                p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``head(x)`` and ``log_var(x)`` along the channel axis."""
        return torch.cat((self.head(x), self.log_var(x)), dim=1)


class VarianceHead(nn.Module):
    """Wrap a network so that it returns ``(logits, log_var)``.

    Args:
        model: A network with a ``head_attrs`` class attribute (every registered network).
            It is modified in place (its heads become :class:`MeanAndLogVar`), so use the
            wrapper, not ``model`` itself, afterwards.

    Attributes:
        model: The wrapped network.
        out_channels: Logit channels ``K`` (those of the wrapped network).

    Shapes:
        Whatever ``model`` returns, twice: e.g. ``(B, K, *spatial)`` logits and a
        ``(B, K, *spatial)`` log-variance for segmentation, ``(B, K)`` and ``(B, K)`` for
        classification; with deep supervision in training mode, two lists of such tensors.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        attrs = getattr(model, "head_attrs", None)
        if not attrs:
            raise TypeError(
                f"{type(model).__name__} does not declare its logit layers (class attribute "
                "head_attrs); every registered network does"
            )
        for attr in attrs:
            layer = getattr(model, attr)
            if isinstance(layer, nn.ModuleList):
                for i, h in enumerate(layer):
                    layer[i] = MeanAndLogVar(h)
            else:
                setattr(model, attr, MeanAndLogVar(layer))
        self.model = model
        self.out_channels = getattr(model, "out_channels", None)

    def variance_parameters(self) -> list[nn.Parameter]:
        """The parameters of the added log-variance layers."""
        return [
            p for m in self.model.modules() if isinstance(m, MeanAndLogVar)
            for p in m.log_var.parameters()
        ]

    @staticmethod
    def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = out.shape[1] // 2
        return out[:, :k], out[:, k:]

    @classmethod
    def _pair(cls, out: Output) -> tuple[Output, Output]:
        if isinstance(out, torch.Tensor):
            return cls._split(out)
        pairs = [cls._split(o) for o in out]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def forward(self, x: torch.Tensor) -> tuple[Output, Output]:
        """``x`` -> ``(logits, log_var)``, each shaped like the wrapped network's output."""
        return self._pair(self.model(x))

    def _split_model(self) -> nn.Module:
        if not (hasattr(self.model, "encode") and hasattr(self.model, "decode")):
            raise TypeError(
                f"{type(self.model).__name__} has no encode/decode split (the registered "
                "segmentation networks have one)"
            )
        return self.model

    def encode(self, x: torch.Tensor) -> object:
        """The wrapped network's ``encode(x)`` (the variance twins live in the decoder side).

        Raises:
            TypeError: the wrapped network has no ``encode``/``decode`` split.
        """
        return self._split_model().encode(x)

    def decode(self, features: object) -> tuple[Output, Output]:
        """``(logits, log_var)`` from :meth:`encode`'s features, as :meth:`forward` returns
        them: ``forward(x) == decode(encode(x))``.

        Raises:
            TypeError: the wrapped network has no ``encode``/``decode`` split.
        """
        return self._pair(self._split_model().decode(features))


def add_variance_head(model: nn.Module) -> VarianceHead:
    """Give ``model`` a zero-initialised log-variance output (see :class:`VarianceHead`)."""
    return VarianceHead(model)

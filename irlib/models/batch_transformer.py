"""The Batch Transformer (Her, Jeong, Song, Han, "Batch Transformer: Look for Attention in Batch", arXiv 2407.04218,
IEEE Access 2025; code ``SeoulTech-HCIRLab/BTN``) adapted to retrieval, as a training-only wrapper of any method.

Taken from the paper (its README code; methods.md §11a):

- **Class Batch Attention (CBA)** attends across the images of the batch, separately for every channel c: query
  and key are per-channel spatial maps ``q_c, k_c`` ``(B, E)`` (E = 7 x 7 tokens) with a channel positional
  encoding, the value holds one number per image ``v_c`` ``(B,)``; ``A_c = softmax(q_c k_cᵀ / √C)`` ``(B, B)`` and
  ``CBA(v)_c = A_c v_c``.
- **BT = CBA(v) + v** (residual); each output is supervised: ``L = λ·L_ViT + L_BT + L_CBA``.

Adapted here (our choices, with the reason):

- ``value="descriptor"`` (default): v is the wrapped model's descriptor, C = its D channels. The paper's maps and
  values are per *class* (its 7 expression classes, v presumably the class scores); per-class maps do not scale to
  GLDv2's 81k classes. ``value="logits"`` keeps the paper's form for small label sets: a linear classifier on the
  descriptor gives v = class logits (C = ``num_classes``), supervised by cross-entropy.
- q and k come from the wrapped model's final backbone map ``(B, C_f, h, w)``
  (:func:`irlib.models.base.last_feature_layer`, captured in the same forward pass), average-pooled to ``grid x
  grid`` (7 x 7 = the paper's E = 49 tokens, whatever the input size) and projected to C channels by two 1x1 convs:
  the paper feeds two branches' maps, we have one map of another width. The channel positional encoding is a
  learned ``(C, E)`` table added to q and k (the form of the paper's module could not be read).
- The softmax runs over the keys (each image's row over the batch sums to 1), scaled by ``1/√C`` as in BTN.
- Supervision (``value="descriptor"``): the run's descriptor losses, one shared head, on three streams with weights
  ``λ`` (``descriptor_weight``), 1 and 1: the per-image descriptor, BT and CBA (both L2-normalised like the
  descriptor). λ is not known from the paper; 1.0 by default.
- Test time: ``forward`` is the wrapped model's per-image descriptor, so descriptors never depend on the batch
  (the paper's inference use of BT is unconfirmed; for retrieval it must not be used).

``inspect`` keys: the wrapped model's, plus ``"batch_attention"`` ``(B, B)``: CBA's attention averaged over channels.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses.composite import DESCRIPTOR, LossTerm, Stream
from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel, last_feature_layer
from irlib.models.wrapper import WrappedModel

VALUES = ("descriptor", "logits")
PROBE_SIZE = 224
"""Side of the blank image whose forward finds the wrapped model's final backbone map (large enough for every
method's smallest scale)."""


def class_batch_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """CBA (Her et al., 2025): per channel c, attention across the batch ``A_c = softmax(q_c k_cᵀ / √C)``.

    ``q, k`` ``(B, C, E)``, ``v`` ``(B, C)`` -> (``CBA(v)`` ``(B, C)`` with ``CBA(v)[i, c] = Σ_j A_c[i, j] v[j, c]``,
    attention ``(C, B, B)``).
    """
    scores = torch.einsum("ice,jce->cij", q, k) / math.sqrt(q.shape[1])
    attention = scores.softmax(dim=-1)
    return torch.einsum("cij,jc->ic", attention, v), attention


@register_model("batch_transformer")
class BatchTransformer(WrappedModel):
    """A retrieval model plus the Batch Transformer's Class Batch Attention, in training only.

    Args:
        model, backbone, pretrained, weights, base, base_kwargs: the wrapped model (:class:`WrappedModel`); whole-
            wrapper weights hold keys ``model.*`` and the wrapper's own.
        value: ``"descriptor"`` (the retrieval adaptation) or ``"logits"`` (the paper's per-class form; needs
            ``num_classes``).
        num_classes: classes of the ``"logits"`` classifier (the training set's).
        grid: q/k maps are pooled to ``grid x grid`` tokens (7: the paper's E = 49).
        descriptor_weight: λ, the weight of the per-image stream against BT's and CBA's (1 each).
    """

    def __init__(
        self,
        model: RetrievalModel | None = None,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        base: str = "gem",
        value: str = "descriptor",
        num_classes: int | None = None,
        grid: int = 7,
        descriptor_weight: float = 1.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(model, backbone, pretrained, base, base_kwargs)
        if value not in VALUES:
            raise ValueError(f"value must be one of {VALUES}, got {value!r}")
        if (value == "logits") != (num_classes is not None) or (num_classes is not None and num_classes < 2):
            raise ValueError(f"value='logits' needs num_classes >= 2 (and only it takes one), got {num_classes!r}")
        if grid < 1 or not descriptor_weight >= 0:
            raise ValueError(f"grid must be >= 1 and descriptor_weight >= 0, got {grid}, {descriptor_weight}")
        self.value, self.grid, self.descriptor_weight = value, grid, float(descriptor_weight)
        channels = self.feat_dim if num_classes is None else num_classes
        self.classifier = nn.Linear(self.feat_dim, num_classes) if num_classes is not None else None
        layer, map_channels = last_feature_layer(self.model, torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
        self._feature_layer = next(n for n, m in self.model.named_modules() if m is layer)
        self.q = nn.Conv2d(map_channels, channels, 1)
        self.k = nn.Conv2d(map_channels, channels, 1)
        self.position = nn.Parameter(torch.zeros(channels, grid * grid))
        nn.init.trunc_normal_(self.position, std=0.02)

    def _maps(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone map ``(B, C_f, h, w)`` -> q, k ``(B, C, E)`` with the channel positional encoding."""
        pooled = F.adaptive_avg_pool2d(features, self.grid)
        return self.q(pooled).flatten(2) + self.position, self.k(pooled).flatten(2) + self.position

    def attend(self, features: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, C_f, h, w)`` map and ``(B, C)`` values -> (CBA(v), BT = CBA(v) + v, attention ``(C, B, B)``)."""
        cba, attention = class_batch_attention(*self._maps(features), v)
        return cba, cba + v, attention

    def _features_and_outputs(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The wrapped model's training outputs and its final backbone map from the same pass."""
        captured: list[Tensor] = []
        hook = self.model.get_submodule(self._feature_layer).register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
        try:
            out = self.model.forward_train(x)
        finally:
            hook.remove()
        return captured[-1], out

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """(B,3,H,W) -> the wrapped model's training outputs plus ``"batch_transformer"`` (BT) and
        ``"class_batch_attention"`` (CBA), ``(B, D)`` L2-normalised; with ``value="logits"`` also ``"logits"`` and
        BT/CBA as ``(B, num_classes)`` logits."""
        features, out = self._features_and_outputs(x)
        if self.classifier is None:
            cba, bt, _ = self.attend(features, out[DESCRIPTOR])
            return out | {
                "batch_transformer": F.normalize(bt, dim=-1),
                "class_batch_attention": F.normalize(cba, dim=-1),
            }
        logits = self.classifier(out[DESCRIPTOR])
        cba, bt, _ = self.attend(features, logits)
        return out | {"logits": logits, "batch_transformer": bt, "class_batch_attention": cba}

    def output_dims(self) -> dict[str, int]:
        channels = self.feat_dim if self.classifier is None else self.classifier.out_features
        extra = {"batch_transformer": channels, "class_batch_attention": channels}
        return self.model.output_dims() | extra | ({"logits": channels} if self.classifier is not None else {})

    def descriptor_streams(self) -> tuple[Stream, ...]:
        """``λ·L(descriptor) + L(BT) + L(CBA)`` through one head; with ``value="logits"`` the descriptor alone (the
        batch streams are class logits, supervised by :meth:`loss_terms`)."""
        if self.classifier is not None:
            return (Stream((DESCRIPTOR,)),)
        return (
            Stream((DESCRIPTOR,), self.descriptor_weight),
            Stream(("batch_transformer",)),
            Stream(("class_batch_attention",)),
        )

    def loss_terms(self) -> list[LossTerm]:
        """The wrapped model's terms; with ``value="logits"`` also cross-entropy on the classifier's logits (λ), BT
        and CBA (1 each), the paper's objective."""
        terms = self.model.loss_terms()
        if self.classifier is not None:
            terms += [
                LossTerm("cross_entropy", self.descriptor_weight, on=("logits",)),
                LossTerm("cross_entropy", 1.0, on=("batch_transformer",)),
                LossTerm("cross_entropy", 1.0, on=("class_batch_attention",)),
            ]
        return terms

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """The wrapped model's maps plus ``"batch_attention"`` (B,B), CBA's attention averaged over channels."""
        out = self.model.inspect(x)
        v = out["descriptor"] if self.classifier is None else self.classifier(out["descriptor"])
        out["batch_attention"] = self.attend(self.model.forward_features(x), v)[2].mean(dim=0)
        return out

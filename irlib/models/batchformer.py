"""BatchFormer (Hou, Yu, Tao, CVPR 2022, ``zhihou7/BatchFormer``) around any irlib retrieval model.

A ``TransformerEncoderLayer(d_model=D, nhead=4, dim_feedforward=D, dropout=0.5)`` (the README's settings) attends
across the samples of a batch: the ``(B, D)`` descriptors are one length-B sequence. In training the shared
classifier sees both streams: :meth:`BatchFormer.forward_train` adds ``"batch_attended"`` to the wrapped model's
training outputs and :meth:`BatchFormer.descriptor_streams` makes the run's descriptor losses read
``cat([descriptor, batch_attended])`` with the labels repeated twice (one head, 2B rows). At test time the encoder
is skipped, so ``forward`` is exactly the wrapped model's descriptor (no batch dependence, no cost). The optional,
batch-dependent test-time use is a reranker, not the descriptor: ``rerank="shortlist_attention"``
(:func:`irlib.eval.rerank.shortlist_attention_rerank`) runs the trained encoder over each query and its shortlist.

Our choices: the encoder reads the wrapped model's L2-normalised descriptors (the only output every method shares)
and its output is L2-normalised too, so both streams live on the same sphere for a cosine-margin head; ``forward``
returns the per-image descriptor in training mode as well (so ``(B, D)`` batches stay ``(B, D)``). The wrapped
model's own training outputs and auxiliary loss terms (e.g. DELG's local branch) are kept.

``inspect`` keys: the wrapped model's (``"features"``, ``"descriptor"``, its maps) plus ``"batch_attention"``
``(B, B)``: the encoder's head-averaged attention between the images of the batch.
"""

from __future__ import annotations

import os
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from irlib.losses.composite import DESCRIPTOR, Stream
from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel
from irlib.models.wrapper import WrappedModel


@register_model("batchformer")
class BatchFormer(WrappedModel):
    """A retrieval model plus a training-only transformer over the batch.

    Args:
        model, backbone, pretrained, weights, base, base_kwargs: the wrapped model (:class:`WrappedModel`); whole-
            wrapper weights hold keys ``model.*`` and ``batchformer.*``.
        nhead, dim_feedforward, dropout: of the encoder layer; ``dim_feedforward=None`` means D.
    """

    def __init__(
        self,
        model: RetrievalModel | None = None,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        base: str = "gem",
        nhead: int = 4,
        dim_feedforward: int | None = None,
        dropout: float = 0.5,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(model, backbone, pretrained, base, base_kwargs)
        dim = self.feat_dim
        if dim % nhead:
            raise ValueError(f"descriptor size {dim} is not divisible by nhead={nhead}")
        self.batchformer = nn.TransformerEncoderLayer(dim, nhead, dim_feedforward or dim, dropout)

    def attend(self, descriptors: Tensor) -> Tensor:
        """(B,D) descriptors -> (B,D) L2-normalised outputs of the encoder run over the batch as a sequence."""
        return self.attend_sets(descriptors.unsqueeze(0)).squeeze(0)

    def attend_sets(self, sets: Tensor) -> Tensor:
        """(S,L,D) descriptors -> (S,L,D): each of the S sets is one length-L sequence through the encoder (the
        layer is not batch-first, so it reads ``(L, S, D)``), outputs L2-normalised. :meth:`attend` is ``S = 1``;
        :func:`irlib.eval.rerank.shortlist_attention_rerank` attends over each query's shortlist at test time."""
        return F.normalize(self.batchformer(sets.transpose(0, 1)).transpose(0, 1), dim=-1)

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        """(B,3,H,W) -> the wrapped model's training outputs plus ``"batch_attended"`` (B,D)."""
        out = self.model.forward_train(x)
        out["batch_attended"] = self.attend(out[DESCRIPTOR])
        return out

    def output_dims(self) -> dict[str, int]:
        return self.model.output_dims() | {"batch_attended": self.feat_dim}

    def descriptor_streams(self) -> tuple[Stream, ...]:
        """One stream of both: the shared classifier on ``cat([descriptor, batch_attended])`` (2B rows)."""
        return (Stream((DESCRIPTOR, "batch_attended")),)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """The wrapped model's maps plus ``"batch_attention"`` (B,B)."""
        out = self.model.inspect(x)
        tokens = out["descriptor"].unsqueeze(1)
        _, weights = self.batchformer.self_attn(tokens, tokens, tokens, need_weights=True)
        out["batch_attention"] = weights[0]
        return out

"""One classifier per domain (UnED's "separate" classifier; Ypsilantis et al., ICCV 2023, nikosips/Universal-Image-
Embeddings ``vit_with_embedding.py``: ``output_projection_{domain}`` with the domain's own classes).

Each image's loss is its own domain's head on its label within that domain. The official trainer feeds one domain
per batch and takes the batch mean (``classification_model.py``, ``weighted_softmax_cross_entropy``); on a batch that
mixes domains this is the mean over all images, i.e. ``sum_d (n_d / B) loss_d``, which is the official value when the
batch holds one domain. A head whose domain is absent from the batch gets a zero gradient (not none), as JAX's
gradient of an unused parameter is zero: the optimiser still decays it, as the official AdamW does, and DDP sees
every parameter used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from irlib.losses.base import ConfiguredLoss
from irlib.losses.composite import CompositeLoss
from irlib.losses.registry import create_loss, loss_class

__all__ = ["PerDomainHead", "split_heads_by_domain"]


class PerDomainHead(ConfiguredLoss):
    """Class-weight heads of loss ``head`` (e.g. ``"cosface"``), one per domain, behind the usual
    ``forward(embeddings (B, D), labels (B,)) -> ()`` with labels in the joint (all domains) label space.

    Args:
        head: a registered loss that owns class weights (``owns_classes``).
        label_domains: ``(C,)`` domain index (0..n_domains-1) of every joint label; a domain's classes keep their
            joint order within its head.
        embedding_dim: the descriptor size.
        head_kwargs: the head's own arguments (``s``, ``m``, ...), the same for every domain.
    """

    name = "per_domain"
    owns_classes = True
    domain_of: Tensor
    local_label: Tensor

    def __init__(
        self, head: str, label_domains: Sequence[int] | np.ndarray, embedding_dim: int, **head_kwargs: Any
    ) -> None:
        domains = np.asarray(label_domains, dtype=np.int64).reshape(-1)
        if not loss_class(head).owns_classes:
            raise ValueError(f"per-domain classifier: loss {head!r} owns no class weights (use a margin head)")
        if not len(domains) or domains.min() < 0:
            raise ValueError("per-domain classifier: label_domains must be a non-empty list of domain indices >= 0")
        counts = np.bincount(domains)
        if (counts == 0).any():
            raise ValueError(f"per-domain classifier: domains {np.flatnonzero(counts == 0).tolist()} have no class")
        super().__init__(head=head, domain_classes=counts.tolist(), embedding_dim=embedding_dim, **head_kwargs)
        self.heads = nn.ModuleList(
            create_loss(head, embedding_dim=embedding_dim, num_classes=int(c), **head_kwargs) for c in counts
        )
        local = np.empty_like(domains)
        for d in range(len(counts)):
            local[domains == d] = np.arange(counts[d])
        # derived from the label map, so not part of the state dict
        self.register_buffer("domain_of", torch.from_numpy(domains), persistent=False)
        self.register_buffer("local_label", torch.from_numpy(local), persistent=False)

    @property
    def num_classes(self) -> int:
        """Joint labels over all domains."""
        return len(self.domain_of)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch of each image's loss on its own domain's head: ``(B, D), (B,) -> ()``."""
        domains, local = self.domain_of[labels], self.local_label[labels]
        total = embeddings.new_zeros((), dtype=torch.float32)
        for d, head in enumerate(self.heads):
            mask = domains == d
            n = int(mask.sum())
            if n:
                total = total + head(embeddings[mask], local[mask]) * (n / len(labels))
            else:
                total = total + sum(p.sum() for p in head.parameters()) * 0.0
        return total

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Cosines to every joint class ``(B, D) -> (B, C)``, each domain's block from its own head."""
        out = embeddings.new_empty((len(embeddings), self.num_classes), dtype=torch.float32)
        for d, head in enumerate(self.heads):
            out[:, self.domain_of == d] = head.cosine(embeddings).to(out.dtype)
        return out

    def top1_hits(self, embeddings: Tensor, labels: Tensor) -> int:
        """Images whose arg-max cosine among their own domain's classes is their class (the official per-domain
        ``classifier_prec@1``)."""
        domains, local = self.domain_of[labels], self.local_label[labels]
        hits = 0
        for d, head in enumerate(self.heads):
            mask = domains == d
            if mask.any():
                hits += int((head.cosine(embeddings[mask]).argmax(dim=1) == local[mask]).sum())
        return hits


def split_heads_by_domain(loss: CompositeLoss, label_domains: Sequence[int] | np.ndarray) -> list[str]:
    """Replace, in place, every class-weight head of ``loss`` (a joint head over all labels) by a
    :class:`PerDomainHead` with the same arguments; returns the keys of the replaced terms (ValueError if none)."""
    replaced = []
    for key, module in loss.terms.items():
        if getattr(module, "owns_classes", False) and not isinstance(module, PerDomainHead):
            kwargs = {k: v for k, v in module.config.items() if k not in ("name", "num_classes", "embedding_dim")}
            loss.terms[key] = PerDomainHead(module.name, label_domains, module.config["embedding_dim"], **kwargs)
            replaced.append(key)
    if not replaced:
        raise ValueError(
            f"a per-domain classifier needs a class-weight loss term; the objective has {list(loss.terms)}"
        )
    return replaced

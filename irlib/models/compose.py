"""Composed retrieval models: any backbone x a pooling taken from a published method x an optional training-time
batch attention x a head, ``create_model("compose", pooling="spca", batch_attention="batchformer", ...)``.

Every part is the module of the method it comes from (no copies): the poolings of :data:`POOLINGS` wrap GeM
(Radenović et al.), SuperGlobal's Regional-GeM + GeM+, SpCa's spatial context and cross fuser, DOLG's local
attention and orthogonal fusion, SENet's self-similarity module, ULTRON's α-pooling and a ViT's class/mean token;
``batch_attention`` wraps the composed network in :class:`~irlib.models.batchformer.BatchFormer` or
:class:`~irlib.models.batch_transformer.BatchTransformer`, which act in training only, so descriptors never depend on
the batch at test time.

Pooling input: the backbone's final map ``(B, C, h, w)``; DOLG's also reads the stride-16 map (``layer3`` of a
ResNet, :func:`irlib.models.backbones.local_stage_index`) and ``cls`` the ViT's final class token. The pooled vector
goes through the head: optional L2 (``normalize_pooled``), optional whitening ``Linear(C', whitening)`` (DOLG's
``fc``, SpCa's and SENet's whitening), optional ``BatchNorm1d`` (``bn``), then L2.

Adaptations where a method's part is moved onto another backbone (said here once): SpCa's fusion and SENet's SSM
read the backbone's final map as their papers do; DOLG's global branch is GeM with learnable p on the final map,
its ``fc_t`` maps it to the local branch's width; ULTRON's α-pooling reads the backbone map instead of its local
transformer's tokens; GeM+ pools with SuperGlobal's fixed p = 4.6 (it has no trainable parameter).

``inspect`` keys: ``"features"`` (the backbone's final map), ``"descriptor"``, ``"pooled"`` ``(B, C')`` and the
pooling's own maps (documented on each pooling class).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import LABELS, create_model, register_model
from irlib.models.backbones import feature_maps, has_class_token, local_stage_index, vit_final
from irlib.models.base import RetrievalModel
from irlib.models.dolg import SpatialAttention2d, orthogonal_component
from irlib.models.pooling import GeM, gem
from irlib.models.senet import SelfSimilarityModule
from irlib.models.spca import GEM_P, CrossFuser, SpatialContext
from irlib.models.superglobal import GEMP_EPS, regional_gem
from irlib.models.ultron import AlphaAttentionPool
from irlib.registry import Registry

BATCH_ATTENTIONS: tuple[str, ...] = ("none", "batchformer", "batch_transformer")
"""``batch_attention`` values: no batch attention, or the registered training-only wrapper of that name."""

STAGE3, CLS_TOKEN = "stage3", "cls_token"
"""Extra inputs a pooling may need besides the final map (its ``needs``)."""


class Pooling(nn.Module):
    """A composable pooling: ``inputs`` (``"features"`` ``(B, C, h, w)`` and what ``needs`` names) -> ``{"pooled":
    (B, out_channels), **maps for figures}``."""

    needs: frozenset[str] = frozenset()
    out_channels: int

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError


POOLINGS: Registry[Callable[..., Pooling]] = Registry("pooling")
"""Pooling name -> ``builder(channels, stage3_channels, **pooling_kwargs)``."""


class GeMPooling(Pooling):
    """GeM (Radenović et al., TPAMI 2018), ``p`` fixed or learned (``learn_p``)."""

    def __init__(self, channels: int, p: float = 3.0, learn_p: bool = False) -> None:
        super().__init__()
        self.pool, self.out_channels = GeM(p=p, learn_p=learn_p), channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"pooled": self.pool(inputs["features"])}


class MeanPooling(Pooling):
    """Average of the map (a ViT's: of its patch tokens)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"pooled": inputs["features"].mean(dim=(-2, -1))}


class ClassToken(Pooling):
    """A ViT's final normalised class token."""

    needs = frozenset({CLS_TOKEN})

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"pooled": inputs[CLS_TOKEN]}


class RegionalGeMPlus(Pooling):
    """SuperGlobal's Regional-GeM then GeM+ (Shao et al., ICCV 2023): map ``"rgem_features"`` ``(B, C, h, w)``."""

    def __init__(self, channels: int, rgem_p: float = 2.5, rgem_size: int = 5, gemp_p: float = 4.6) -> None:
        super().__init__()
        self.rgem_p, self.rgem_size, self.gemp_p, self.out_channels = rgem_p, rgem_size, gemp_p, channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        fmap = regional_gem(inputs["features"], self.rgem_p, self.rgem_size)
        return {"pooled": gem(fmap, self.gemp_p, GEMP_EPS), "rgem_features": fmap}


class SpatialContextPooling(Pooling):
    """SpCa's spatial context fused by its cross-attention fuser, then GeM p = 3 (Zhang et al., ICCV 2023): maps
    ``"token_assignments"`` ``(B, K, h, w)``, ``"context_map"`` ``(B, K*multi, h, w)``."""

    def __init__(self, channels: int, K: int = 16, local_dim: int = 128, multi: int = 3, num_heads: int = 8) -> None:
        super().__init__()
        self.context = SpatialContext(channels, K, local_dim, multi)
        self.fuser = CrossFuser(channels, K * multi, num_heads)
        self.out_channels = channels

    def no_weight_decay(self) -> set[str]:
        """The log-parametrised mixture priors and variances (as :meth:`irlib.models.spca.SpCa.no_weight_decay`)."""
        return {"context.log_pi", "context.log_cov"}

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        context, assignments = self.context(inputs["features"])
        fused = self.fuser(inputs["features"], context)
        return {"pooled": gem(fused, GEM_P), "token_assignments": assignments, "context_map": context}


class OrthogonalFusion(Pooling):
    """DOLG's orthogonal fusion (Yang et al., ICCV 2021): ``cat[fg, mean_hw(fl ⊥ fg)]`` ``(B, 2 C3)`` with ``fg =
    fc_t(GeM_learned(f4))`` and ``fl`` the attention-weighted stride-16 map: map ``"attention"`` ``(B, h3, w3)``."""

    needs = frozenset({STAGE3})

    def __init__(self, channels: int, stage3_channels: int, p: float = 3.0) -> None:
        super().__init__()
        self.local = SpatialAttention2d(stage3_channels)
        self.pool = GeM(p=p, learn_p=True)
        self.fc_t = nn.Linear(channels, stage3_channels)
        self.out_channels = 2 * stage3_channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        fl, attention = self.local(inputs[STAGE3])
        fg = self.fc_t(self.pool(inputs["features"]))
        fused = orthogonal_component(fl, fg).mean(dim=(-2, -1))
        return {"pooled": torch.cat([fg, fused], dim=1), "attention": attention.squeeze(1)}


class StructuralEmbedding(Pooling):
    """SENet's self-similarity module, then GeM with learned p (Lee et al., CVPR 2023): map ``"structure_norm"``
    ``(B, h, w)``."""

    def __init__(self, channels: int, mid_dim: int = 256, unfold_size: int = 7, p: float = 3.0) -> None:
        super().__init__()
        self.ssm = SelfSimilarityModule(channels, mid_dim, unfold_size)
        self.pool = GeM(p=p, learn_p=True)
        self.out_channels = channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        _, structure = self.ssm.similarity_and_structure(inputs["features"])
        fused = self.ssm.ffn(inputs["features"] + structure)
        return {"pooled": self.pool(fused), "structure_norm": structure.norm(dim=1)}


class AlphaPooling(Pooling):
    """ULTRON's attention-based α-pooling (Kweon & Park, ACCV 2024): map ``"attention"`` ``(B, h, w)``."""

    def __init__(self, channels: int, alpha: float = -3.0, gamma: float = 2.0) -> None:
        super().__init__()
        self.pool = AlphaAttentionPool(channels, alpha=alpha, gamma=gamma)
        self.out_channels = channels

    def forward(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pooled, attention = self.pool(inputs["features"])
        return {"pooled": pooled, "attention": attention}


def _final_only(cls: type[Pooling]) -> Callable[..., Pooling]:
    def build(channels: int, stage3_channels: int | None, **kwargs: Any) -> Pooling:
        return cls(channels, **kwargs)

    return build


for _name, _cls in (
    ("gem", GeMPooling),
    ("mean", MeanPooling),
    ("cls", ClassToken),
    ("gem_plus", RegionalGeMPlus),
    ("spca", SpatialContextPooling),
    ("senet", StructuralEmbedding),
    ("alpha", AlphaPooling),
):
    POOLINGS.register(_name, _final_only(_cls))
POOLINGS.register("gem_learned", lambda channels, stage3_channels, **kw: GeMPooling(channels, learn_p=True, **kw))
POOLINGS.register("dolg", lambda channels, stage3_channels, **kw: OrthogonalFusion(channels, stage3_channels, **kw))


class ComposedNet(RetrievalModel):
    """Backbone -> :data:`POOLINGS` ``pooling`` -> head: (B,3,H,W) -> (B, D) unit-norm descriptors.

    Args:
        backbone, pretrained, weights: as every method (:class:`RetrievalModel`).
        pooling: a :data:`POOLINGS` name; ``pooling_kwargs`` its arguments (e.g. ``{"K": 8}`` for ``spca``).
        whitening: output size of a ``Linear`` (with bias) after pooling, or None (D = the pooling's width).
        bn: a ``BatchNorm1d`` on the whitened vector before the final L2 (running statistics at test time).
        normalize_pooled: L2 the pooled vector before the whitening (SuperGlobal's and the UnED baselines' order).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        pooling: str = "gem",
        pooling_kwargs: Mapping[str, Any] | None = None,
        whitening: int | None = None,
        bn: bool = False,
        normalize_pooled: bool = False,
    ) -> None:
        super().__init__()
        if whitening is not None and whitening <= 0:
            raise ValueError(f"whitening must be a positive dimension or None, got {whitening}.")
        build = POOLINGS.get(pooling)
        channels = self.build_backbone(backbone, pretrained)
        if pooling == "cls" and not has_class_token(self.backbone):
            raise ValueError(f"pooling='cls' needs a ViT backbone with a class token; {backbone!r} has none.")
        self._stage3 = local_stage_index(self.backbone) if pooling == "dolg" else None
        stage3_channels = None if self._stage3 is None else int(self.backbone.feature_info[self._stage3]["num_chs"])
        self.pool: Pooling = build(channels, stage3_channels, **dict(pooling_kwargs or {}))
        self.normalize_pooled = normalize_pooled
        width = self.pool.out_channels
        self.whiten: nn.Module = nn.Linear(width, whitening) if whitening is not None else nn.Identity()
        self.feat_dim: int = whitening if whitening is not None else width
        self.bn: nn.Module = nn.BatchNorm1d(self.feat_dim) if bn else nn.Identity()

    def no_weight_decay(self) -> set[str]:
        """The pooling's parameters excluded from weight decay (timm convention), e.g. SpCa's mixture priors."""
        own = getattr(self.pool, "no_weight_decay", set)()
        return {f"pool.{name}" for name in own}

    def _inputs(self, x: Tensor) -> dict[str, Tensor]:
        """(B,3,H,W) -> what the pooling reads: ``"features"`` and its ``needs``, from one backbone pass."""
        x = self.to_backbone_order(x)
        if self._stage3 is not None:
            final, (stage3,) = feature_maps(self.backbone, x, [self._stage3])
            return {"features": final, STAGE3: stage3}
        if CLS_TOKEN in self.pool.needs:
            tokens, final = vit_final(self.backbone, x)
            return {"features": final, CLS_TOKEN: tokens[:, 0]}
        return {"features": self.backbone(x)}

    def _run(self, x: Tensor) -> dict[str, Tensor]:
        inputs = self._inputs(x)
        out = self.pool(inputs)
        pooled = F.normalize(out["pooled"], dim=-1) if self.normalize_pooled else out["pooled"]
        return {"features": inputs["features"], **out, "descriptor": F.normalize(self.bn(self.whiten(pooled)), dim=-1)}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,C,h,w) the backbone's final map."""
        return self._inputs(x)["features"]

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return self._run(x)["descriptor"]

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``"features"``, ``"descriptor"``, ``"pooled"`` and the pooling's maps (module docstring)."""
        return self._run(x)


@register_model("compose")
def compose(
    *,
    backbone: str = "resnet50",
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    batch_attention: str = "none",
    batch_attention_kwargs: Mapping[str, Any] | None = None,
    **parts: Any,
) -> RetrievalModel:
    """A :class:`ComposedNet` (``parts``: its pooling and head arguments), wrapped by the training-only
    ``batch_attention`` (:data:`BATCH_ATTENTIONS`, arguments ``batch_attention_kwargs``) unless ``"none"``.

    ``weights`` is a file of the whole result (what training saves). The model's ``config`` is this function's
    arguments under method ``"compose"``, so ``create_model(**config)`` rebuilds it.
    """
    if pretrained and weights is not None:
        raise ValueError("Pass either pretrained=True or weights=PATH, not both.")
    if batch_attention not in BATCH_ATTENTIONS:
        raise ValueError(f"batch_attention must be one of {BATCH_ATTENTIONS}, got {batch_attention!r}.")
    if batch_attention == "none" and batch_attention_kwargs:
        raise ValueError("batch_attention_kwargs apply only with a batch_attention.")
    net = ComposedNet(backbone, pretrained=pretrained, **parts)
    model: RetrievalModel = net
    if batch_attention != "none":
        model = create_model(batch_attention, model=net, **dict(batch_attention_kwargs or {}))
    if weights is not None:
        model.load_weights(weights)
    extra = {"batch_attention_kwargs": dict(batch_attention_kwargs or {})} if batch_attention != "none" else {}
    model.config = {
        **{k: v for k, v in net.config.items() if k != "weights"},
        "method": "compose",
        "weights": os.fspath(weights) if weights is not None else None,
        "batch_attention": batch_attention,
        **extra,
    }
    return model


@LABELS.register("compose")
def compose_label(config: Mapping[str, Any]) -> str:
    """A composed model's name in run records and tables, its parts: ``"compose[spca+batchformer/w512]"``."""
    label = str(config.get("pooling", "gem"))
    if config.get("batch_attention", "none") != "none":
        label += f"+{config['batch_attention']}"
    if config.get("whitening"):
        label += f"/w{config['whitening']}"
    return f"compose[{label}{'/bn' if config.get('bn') else ''}]"

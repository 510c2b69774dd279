"""SpCa: spatial-context-aware global descriptor (Zhang, Wang, Zhou, Koniusz, ICCV 2023; code Zy-Zhang/SpCa).

Forward (``combine="cro"``, the official default), for a CNN whose last stage gives ``C5`` ``(B, C, h, w)``:

1. **Token assignment** (``pos_branch``, official ``Spca_layer``): tokens ``X = proj_kv(C5)`` ``(B, hw, local_dim)``,
   templates ``M = LayerNorm(clusters)`` ``(K, local_dim)``, one E-step of an isotropic Gaussian mixture with
   learnable priors ``pi`` and variances ``cov``::

       logit[n, k] = log pi_k - c * log cov_k - ||X_n - M_k||^2 / (2 cov_k),   R = softmax_k(logit)

2. **Distance encoding**: ``R' = (R + 1e-8)`` normalised over positions; ``A`` = column-normalised ``exp(-d)`` of
   the grid's Euclidean distances; context channels ``C_j[k, m] = sum_n R'[n, k] (A^p_j)[n, m]`` for ``multi``
   powers ``p_j``, concatenated (power-major) and LayerNorm-ed over the ``K * multi`` channels.
3. **Fusion** (``fuser``): C5 tokens ``Q``; ``Q += CrossAttn(LN(Q), kv, kv)`` with ``kv = Linear(context)``
   (8 heads, out-projection zero-initialised), then ``Q += MLP(Q)`` (``C -> 2C -> C``, exact GELU, no pre-norm).
4. **Head**: GeM with fixed ``p = 3`` -> ``whiten`` (1x1 conv with bias, ``C -> outputdim``) -> L2.

Other ``combine`` values of the official code: ``"cat"`` (LayerNorm-ed concat + residual MLP, whiten ``2C ->
outputdim``), ``"had"`` (per-position outer product of a ``C/4`` projection and the context, whiten
``C/4 * K * multi -> outputdim``), ``"orth"`` (DOLG-style orthogonal fusion of ``fc_t(GeM(C5))`` and the
projected context, then a Linear ``C -> outputdim``), ``"dec"`` (cross-attention, MLP, then self-attention).
The official ``"fur"`` names an undefined class and is rejected. The official code hard-codes ``C = 2048``;
here ``C`` is the backbone's channel count, so any timm CNN works (ResNet-50/101 give the official layout), and so
does a ViT (its final patch-token map is C5, see :func:`irlib.models.backbones.create_backbone`).

Official bugs that change the model's forward (numbers of ``spca-training.md`` §7). Each has a constructor flag
whose default is the fixed behaviour; ``OFFICIAL_OPTIONS`` sets them all to the official code's behaviour:

- ``log_gmm_params`` (bug 10, unconstrained mixture parameters): ``True`` stores ``pos_branch.log_pi`` and
  ``pos_branch.log_cov`` (any real value is valid, excluded from weight decay by :meth:`SpCa.no_weight_decay`);
  ``False`` stores the official raw ``pos_branch.pi`` / ``pos_branch.cov``, which give NaN once trained to
  ``<= 0``. The two are exact reparametrisations of each other (the ``"spca"`` converter takes ``log``).
- ``gmm_full_log_det`` (bug 10, Gaussian normaliser): ``True`` uses the isotropic ``local_dim``-dimensional
  Gaussian's ``c = local_dim / 2``; ``False`` the official ``c = 1/2`` (``log(pi / sqrt(cov))``).
- ``diffusion_from_a1`` (bug 11, distance-encoding off-by-one): ``True`` uses powers ``A^1 .. A^multi``;
  ``False`` the official ``A^2 .. A^(multi+1)`` (the official loop multiplies before appending). The spec suggests
  the official powers for weight compatibility; no official weights were released, so the default is the fix.

Fixed without a flag because the values do not change: bug 3 (hard-coded ``.cuda()``; tensors follow the input's
device), bug 9 (the "online" updates of pi, templates and cov are computed but never used: omitted), bug 15
(distance matrices rebuilt and repeated per image: computed once per grid size and cached). Bug 16 (the
fuser's MLP residual has no pre-norm and a random init) is mirrored by default, as the spec asks;
``fuser_mlp_norm=True`` adds a pre-LayerNorm ``fuser.mlp_ln`` and zero-initialises ``fuser.mlp.fc2``
(``combine="cro"`` only). Also unlike the official code, a 1x1 feature map (inputs under 64 px) works: the
official ``squeeze(1)`` drops the position axis there.

``inspect`` keys (``h, w`` = input / 32 for ResNets):

- ``"features"`` ``(B, C', h, w)``: :meth:`SpCa.forward_features`, the map GeM pools (the fused map; ``C' = C``
  for cro/dec, ``2C`` for cat, ``C/4 * K * multi`` for had; C5 itself for orth, whose GeM pools C5);
- ``"descriptor"`` ``(B, outputdim)``; ``"backbone_features"`` ``(B, C, h, w)``: C5;
- ``"token_assignments"`` ``(B, K, h, w)``: the responsibilities ``R`` (sum to 1 over K);
- ``"context_map"`` ``(B, K * multi, h, w)``: the LayerNorm-ed context (channel ``j * K + k``: token k, power j).

Checkpoints: ``load_checkpoint(model, path, source="spca")`` reads official state dicts (also the training
container ``{'epoch', 'state_dict', 'optim'}`` and a ``module.`` DDP prefix). It drops exactly the training-only
ArcFace matrix ``classifier.weight`` ``(81313, outputdim)``; ``backbone.block1.{0,1}`` -> ``backbone.conv1/bn1``
and ``backbone.block{2..5}`` -> ``backbone.layer{1..4}``; head keys keep their names, except ``pos_branch.pi`` /
``pos_branch.cov`` -> ``log_pi`` / ``log_cov`` (their logarithms) for a model with ``log_gmm_params``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.base import RetrievalModel
from irlib.models.checkpoints import register_converter
from irlib.models.pooling import gem

COMBINES = ("cro", "cat", "had", "orth", "dec")
OFFICIAL_OPTIONS: dict[str, bool] = {"log_gmm_params": False, "gmm_full_log_det": False, "diffusion_from_a1": False}
"""Constructor flags reproducing the official code's forward exactly (``SpCa(..., **OFFICIAL_OPTIONS)``)."""

GEM_P = 3.0
_ASSIGN_EPS = 1e-8


@functools.lru_cache(maxsize=32)
def diffusion_matrices(h: int, w: int, powers: tuple[int, ...], device: torch.device) -> Tensor:
    """Powers ``A^p`` ``(len(powers), hw, hw)`` of the grid's random-walk matrix (float32, no gradient).

    ``A[n, m] = exp(-||g_n - g_m||) / sum_n' exp(-||g_n' - g_m||)`` over row-major cells ``g`` of an ``h x w``
    grid; powers are accumulated as ``(A @ A) @ A ...`` like the official ``distance_encoding_m``. Cached
    (read-only) and built outside inference mode, so the cached tensors also serve autograd forwards.
    """
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coord = torch.stack((ii, jj)).reshape(2, -1).T
        sq = (coord * coord).sum(-1, keepdim=True)
        dist2 = sq - 2 * coord @ coord.T + sq.T
        similarity = torch.exp(-dist2.to(device).sqrt().abs())
        a = similarity / similarity.sum(dim=0, keepdim=True)
        out, power = [], a
        for p in range(1, max(powers) + 1):
            if p > 1:
                power = power @ a
            if p in powers:
                out.append(power)
        return torch.stack(out)


class SpatialContext(nn.Module):
    """Token assignment + distance encoding (official ``Spca_layer``): C5 ``(B, C, h, w)`` ->
    ``(context (B, K*multi, h, w), assignments (B, K, h, w))``."""

    def __init__(
        self,
        in_channels: int,
        K: int = 16,
        local_dim: int = 128,
        multi: int = 3,
        *,
        log_gmm_params: bool = True,
        gmm_full_log_det: bool = True,
        diffusion_from_a1: bool = True,
    ) -> None:
        super().__init__()
        self.K, self.local_dim, self.multi = K, local_dim, multi
        self.log_gmm_params = log_gmm_params
        self.log_det_coef = local_dim / 2 if gmm_full_log_det else 0.5
        first = 1 if diffusion_from_a1 else 2
        self.powers: tuple[int, ...] = tuple(range(first, first + multi))
        self.clusters = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, K, local_dim)))
        if log_gmm_params:
            self.log_pi = nn.Parameter(torch.full((1, K), -math.log(K)))
            self.log_cov = nn.Parameter(torch.zeros(1, K))
        else:
            self.pi = nn.Parameter(torch.full((1, K), 1.0 / K))
            self.cov = nn.Parameter(torch.ones(1, K))
        self.proj_kv = nn.Conv2d(in_channels, local_dim, kernel_size=1, bias=False)
        self.p_norm = nn.LayerNorm(K * multi)
        self.norm_templates = nn.LayerNorm(local_dim)

    def _log_weight_and_variance(self) -> tuple[Tensor, Tensor]:
        """``log pi - c log cov`` and ``cov``, each ``(1, K)``."""
        if self.log_gmm_params:
            return self.log_pi - self.log_det_coef * self.log_cov, self.log_cov.exp()
        if self.log_det_coef == 0.5:
            return torch.log(self.pi / torch.sqrt(self.cov)), self.cov
        return torch.log(self.pi) - self.log_det_coef * torch.log(self.cov), self.cov

    def assign(self, c5: Tensor) -> Tensor:
        """``(B, C, h, w)`` -> responsibilities ``R`` ``(B, hw, K)``, softmax over K."""
        tokens = self.proj_kv(c5).flatten(2).transpose(1, 2)
        templates = self.norm_templates(self.clusters)
        sq_dist = (tokens.unsqueeze(-1) - templates.transpose(1, 2).unsqueeze(1)).square().sum(dim=2)
        log_weight, variance = self._log_weight_and_variance()
        return torch.softmax(log_weight - sq_dist / variance / 2, dim=-1)

    def encode(self, assignments: Tensor, h: int, w: int) -> Tensor:
        """Responsibilities ``(B, hw, K)`` -> raw context ``(B, K*multi, hw)`` before the LayerNorm."""
        spread = assignments + _ASSIGN_EPS
        spread = spread / spread.sum(dim=-2, keepdim=True)
        matrices = diffusion_matrices(h, w, self.powers, spread.device).to(spread.dtype)
        return torch.cat([spread.transpose(1, 2) @ m for m in matrices], dim=1)

    def forward(self, c5: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, h, w)`` -> ``(context (B, K*multi, h, w), assignments (B, K, h, w))``."""
        b, _, h, w = c5.shape
        assignments = self.assign(c5)
        context = self.p_norm(self.encode(assignments, h, w).transpose(1, 2)).transpose(1, 2)
        return context.reshape(b, -1, h, w), assignments.transpose(1, 2).reshape(b, self.K, h, w)


class CrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v/proj Linears (official ``Attention``): ``(B, Nq, C)`` queries,
    ``(B, Nk, C)`` keys/values -> ``(B, Nq, C)``; ``proj`` starts at zero, q/k/v at trunc-normal(0.02)."""

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        for layer in (self.q, self.k, self.v):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q`` ``(B, Nq, C)``, ``k``/``v`` ``(B, Nk, C)`` -> ``(B, Nq, C)``."""
        b, nq, _ = q.shape
        nk = k.shape[1]
        q = self.q(q).reshape(b, nq, self.num_heads, -1).transpose(1, 2)
        k = self.k(k).reshape(b, nk, self.num_heads, -1).transpose(1, 2)
        v = self.v(v).reshape(b, nk, self.num_heads, -1).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, nq, -1))


def _tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


def _unflatten(tokens: Tensor, h: int, w: int) -> Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class CrossFuser(nn.Module):
    """``combine="cro"`` (official ``Fuser``): C5 ``(B, C, h, w)`` + context ``(B, Kc, h, w)`` -> ``(B, C, h, w)``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, mlp_norm: bool = False) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(dim, num_heads)
        self.mlp = Mlp(dim, 2 * dim, dim, act_layer=nn.GELU)
        self.ln = nn.LayerNorm(dim)
        self.proj = nn.Linear(context_dim, dim)
        self.mlp_ln: nn.Module = nn.LayerNorm(dim) if mlp_norm else nn.Identity()
        if mlp_norm:
            nn.init.zeros_(self.mlp.fc2.weight)
            nn.init.zeros_(self.mlp.fc2.bias)

    def forward(self, c5: Tensor, context: Tensor) -> Tensor:
        """C5 ``(B, C, h, w)``, context ``(B, Kc, h, w)`` -> fused map (see the class docstring)."""
        h, w = c5.shape[-2:]
        q, kv = _tokens(c5), self.proj(_tokens(context))
        q = q + self.cross_attn(self.ln(q), kv, kv)
        q = q + self.mlp(self.mlp_ln(q))
        return _unflatten(q, h, w)


class DecoderFuser(nn.Module):
    """``combine="dec"`` (official ``Decoder_c``): cross-attention, MLP, then self-attention -> ``(B, C, h, w)``."""

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8) -> None:
        super().__init__()
        self.self_attn = CrossAttention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.proj = nn.Sequential(nn.Linear(context_dim, dim), nn.LayerNorm(dim))
        self.bn1 = nn.LayerNorm(dim)
        self.bn2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim, dim, act_layer=nn.GELU)

    def forward(self, c5: Tensor, context: Tensor) -> Tensor:
        """C5 ``(B, C, h, w)``, context ``(B, Kc, h, w)`` -> fused map (see the class docstring)."""
        h, w = c5.shape[-2:]
        q, kv = _tokens(c5), self.proj(_tokens(context))
        q = q + self.cross_attn(self.bn1(q), kv, kv)
        q = q + self.mlp(q)
        q_norm = self.bn2(q)
        return _unflatten(q + self.self_attn(q_norm, q_norm, q_norm), h, w)


class ConcatFuser(nn.Module):
    """``combine="cat"`` (official ``ConCate``): ``[LN(C5), LN(proj(context))]`` + MLP -> ``(B, 2C, h, w)``."""

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.mlp = Mlp(2 * dim, 4 * dim, 2 * dim, act_layer=nn.GELU)
        self.bn1 = nn.LayerNorm(dim)
        self.bn2 = nn.LayerNorm(dim)
        self.proj = nn.Linear(context_dim, dim)

    def forward(self, c5: Tensor, context: Tensor) -> Tensor:
        """C5 ``(B, C, h, w)``, context ``(B, Kc, h, w)`` -> fused map (see the class docstring)."""
        h, w = c5.shape[-2:]
        q = torch.cat((self.bn1(_tokens(c5)), self.bn2(self.proj(_tokens(context)))), dim=2)
        return _unflatten(q + self.mlp(q), h, w)


class OuterProductFuser(nn.Module):
    """``combine="had"`` (official ``HadaMard``): per-position ``LN(proj(C5)) (x) LN(context)`` ->
    ``(B, C/4 * Kc, h, w)``."""

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.bn1 = nn.LayerNorm(dim // 4)
        self.bn2 = nn.LayerNorm(context_dim)
        self.proj = nn.Linear(dim, dim // 4)

    def forward(self, c5: Tensor, context: Tensor) -> Tensor:
        """C5 ``(B, C, h, w)``, context ``(B, Kc, h, w)`` -> fused map (see the class docstring)."""
        h, w = c5.shape[-2:]
        q, x = self.bn1(self.proj(_tokens(c5))), self.bn2(_tokens(context))
        return _unflatten(torch.einsum("bnc,bnd->bncd", q, x).flatten(2), h, w)


class OrthogonalFuser(nn.Module):
    """``combine="orth"`` (official ``Orthogonal``, DOLG-style): ``[fg, avg(fl - (fg.fl) fg / |fg|^2)]`` with
    ``fg = fc_t(GeM(C5))`` and ``fl = fc(context)`` -> ``(B, C)``."""

    def __init__(self, dim: int, context_dim: int) -> None:
        super().__init__()
        self.fc_t = nn.Linear(dim, dim // 2)
        self.fc = nn.Conv2d(context_dim, dim // 2, kernel_size=1)

    def forward(self, c5: Tensor, context: Tensor) -> Tensor:
        """C5 ``(B, C, h, w)``, context ``(B, Kc, h, w)`` -> ``(B, C)``."""
        fg = self.fc_t(gem(c5, GEM_P))
        fl = self.fc(context)
        dot = torch.einsum("bc,bchw->bhw", fg, fl).unsqueeze(1)
        orth = fl - dot * fg[:, :, None, None] / fg.square().sum(1)[:, None, None, None]
        return torch.cat((fg, orth.mean(dim=(-2, -1))), dim=1)


@register_model("spca")
class SpCa(RetrievalModel):
    """SpCa (ICCV 2023): (B,3,H,W) RGB images (ImageNet normalisation) -> (B, outputdim) unit-norm descriptors.

    Args:
        backbone: timm CNN (official: ``resnet101``/``resnet50``); its last feature map is C5.
        pretrained: ImageNet backbone weights. ``weights``: a local irlib state dict (``backbone.*`` keys: the
            whole model) or a bare timm backbone state dict, loaded strictly.
        outputdim: descriptor size (whitening output). K: mixture components (token types). local_dim: token
            dimension. multi: number of diffusion powers. combine: fusion, one of ``COMBINES``.
        num_heads: attention heads of the cro/dec fusers.
        log_gmm_params, gmm_full_log_det, diffusion_from_a1: fixes of official bugs 10, 10 and 11 (module
            docstring); ``False`` reproduces the official forward. fuser_mlp_norm: bug-16 ablation (pre-norm,
            zero-init MLP residual), ``False`` = official.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        outputdim: int = 2048,
        K: int = 16,
        local_dim: int = 128,
        multi: int = 3,
        combine: str = "cro",
        num_heads: int = 8,
        log_gmm_params: bool = True,
        gmm_full_log_det: bool = True,
        diffusion_from_a1: bool = True,
        fuser_mlp_norm: bool = False,
    ) -> None:
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r} (the official 'fur' is broken).")
        if fuser_mlp_norm and combine != "cro":
            raise ValueError("fuser_mlp_norm applies to combine='cro' only.")
        for name, value in (("outputdim", outputdim), ("K", K), ("local_dim", local_dim), ("multi", multi)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        channels = self.build_backbone(backbone, pretrained)
        context_dim = K * multi
        self.pos_branch = SpatialContext(
            channels,
            K,
            local_dim,
            multi,
            log_gmm_params=log_gmm_params,
            gmm_full_log_det=gmm_full_log_det,
            diffusion_from_a1=diffusion_from_a1,
        )
        self.combine = combine
        self.fuser: nn.Module
        self.whiten: nn.Module
        if combine == "orth":
            self.fuser = OrthogonalFuser(channels, context_dim)
            self.whiten = nn.Linear(channels, outputdim)
        else:
            if combine == "cro":
                self.fuser, fused_channels = CrossFuser(channels, context_dim, num_heads, fuser_mlp_norm), channels
            elif combine == "dec":
                self.fuser, fused_channels = DecoderFuser(channels, context_dim, num_heads), channels
            elif combine == "cat":
                self.fuser, fused_channels = ConcatFuser(channels, context_dim), 2 * channels
            else:
                self.fuser, fused_channels = OuterProductFuser(channels, context_dim), channels // 4 * context_dim
            self.whiten = nn.Conv2d(fused_channels, outputdim, kernel_size=1)
        self.feat_dim: int = outputdim

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (timm convention): the log-parametrised mixture
        priors and variances (bug 10 fix); empty in the official parametrisation, which decays them."""
        return {"pos_branch.log_pi", "pos_branch.log_cov"} if self.pos_branch.log_gmm_params else set()

    def head(self, c5: Tensor) -> dict[str, Tensor]:
        """Backbone map ``(B, C, h, w)`` -> ``features``, ``descriptor``, ``token_assignments``, ``context_map``
        (shapes in the module docstring)."""
        context, assignments = self.pos_branch(c5)
        fused = self.fuser(c5, context)
        if self.combine == "orth":
            features, out = c5, self.whiten(fused)
        else:
            features, out = fused, self.whiten(gem(fused, GEM_P)[:, :, None, None]).flatten(1)
        return {
            "features": features,
            "descriptor": F.normalize(out, dim=-1),
            "token_assignments": assignments,
            "context_map": context,
        }

    def _run(self, x: Tensor) -> dict[str, Tensor]:
        c5 = self.backbone(self.to_backbone_order(x))
        return {**self.head(c5), "backbone_features": c5}

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) -> (B,C',h,w): the map GeM pools (fused map; C5 for ``combine="orth"``)."""
        return self._run(x)["features"]

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised RGB images -> (B, outputdim) L2-normalised descriptors."""
        return self._run(x)["descriptor"]

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``features``, ``descriptor``, ``backbone_features``, ``token_assignments`` (B,K,h,w) and
        ``context_map`` (B,K*multi,h,w); see the module docstring."""
        return self._run(x)


_TRAINING_ONLY = frozenset({"classifier.weight"})
_LOG_PARAMS = {"pos_branch.pi": "pos_branch.log_pi", "pos_branch.cov": "pos_branch.log_cov"}
_BACKBONE_STAGE = re.compile(r"backbone\.block([2-5])\.(.+)")


def _official_key(key: str) -> str | None:
    """Official SpCa key -> irlib key of the official-parametrised model (``None``: no counterpart)."""
    if key.startswith("backbone.block1.0."):
        return "backbone.conv1." + key.removeprefix("backbone.block1.0.")
    if key.startswith("backbone.block1.1."):
        return "backbone.bn1." + key.removeprefix("backbone.block1.1.")
    if match := _BACKBONE_STAGE.fullmatch(key):
        return f"backbone.layer{int(match[1]) - 1}.{match[2]}"
    if key.startswith(("pos_branch.", "fuser.", "whiten.")):
        return key
    return None


@register_converter("spca")
def convert_spca_checkpoint(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """Official SpCa state dict (or ``{'epoch', 'state_dict', 'optim'}``; ``module.`` prefix allowed) -> irlib.

    Drops exactly ``classifier.weight`` (ArcFace, training-only). Into a model with ``log_gmm_params`` the
    official ``pi``/``cov`` become ``log_pi``/``log_cov`` (they must be positive). Unmappable keys -> ValueError.
    """
    if isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    log_params = bool(getattr(getattr(model, "pos_branch", None), "log_gmm_params", False))
    targets = model.state_dict().keys()
    out: dict[str, Tensor] = {}
    unmappable = []
    for key, value in state_dict.items():
        if key in _TRAINING_ONLY:
            continue
        new_key = _official_key(key)
        if log_params and key in _LOG_PARAMS:
            if not bool((value > 0).all()):
                raise ValueError(f"{key} has non-positive values; it cannot be log-parametrised (log_gmm_params).")
            new_key, value = _LOG_PARAMS[key], value.log()
        if new_key is None or new_key not in targets:
            unmappable.append(key)
            continue
        out[new_key] = value
    if unmappable:
        raise ValueError(f"SpCa checkpoint keys with no irlib counterpart: {', '.join(sorted(unmappable))}")
    return out

"""ULTRON (Kweon & Park, "ULTRON: Unifying Local Transformer and Convolution for Large-scale Image Retrieval",
ACCV 2024), rebuilt from its description: there is no official code, so much of this module is our design.

From the paper (``methods.md`` §8, abstract [abs]): a convolutional encoder followed by transformer blocks with
local (fixed-size window) self-attention whose keys see broader context; a channel-wise dilated convolution that
adapts the dilation per channel; an attention-based pooling; a classification loss only (MadaCos, outside the model).

From an unofficial re-implementation (``methods.md`` §8 [3rd], hints only):

- CDConv (eqs. 1-2): ECA channel attention ``a = sigmoid(Conv1d_k(GAP(X)))``, per-channel dilation
  ``d_c = 1 if a_c > 0.75, 3 if 0.5 < a_c <= 0.75, 6 otherwise``;
- SCALA block (eqs. 3-8): keys through the multi-scale context kernel
  ``MCK(K) = Conv1x1(concat(K, DW3x3_d1(K), DW3x3_d2(K), DW3x3_d3(K)))``, then window-7 softmax attention
  ``softmax(Q MCK(K)^T / sqrt(d) + relative position bias) V``;
- alpha-pooling (eqs. 9-12): query ``d_q = W_q GeM_gamma(X)`` (learnable gamma, init 2), weights
  ``A = softmax(W_k X d_q / sqrt(d))`` over positions, output ``f_alpha^-1(sum_j A_j f_alpha(v_j))``. The reference
  writes ``f_alpha(x) = x^(1/alpha)`` but also ``ln x`` at alpha = 1, which only fits Amari's alpha-representation
  ``f_alpha(x) = x^((1-alpha)/2)`` used by SimPool (Psomas et al., ICCV 2023): that is what we implement;
- ULTRON-S last stage: 512 channels, 5 blocks, 16 heads (our defaults for the transformer stage).

Our choices: instead of ULTRON's own convolutional stages, a timm CNN truncated after its stride-16 stage (ResNet-50
``conv1..layer3``, 1024 channels) is the convolutional encoder; ``cd_depth`` residual CDConv blocks
``X + BN(Conv1x1(GELU(BN(CDConv(X)))))`` follow at stride 16; a 2x2 stride-2 conv + LayerNorm merges patches to
``embed_dim`` at stride 32; ``depth`` pre-norm SCALA blocks (no window shift: MCK already mixes across window
borders; MLP ratio 4, GELU) and a final LayerNorm; alpha-pooling; Linear ``embed_dim -> dim`` and L2.
A ViT backbone (all blocks at the patch stride) is cut after block ``ceil(2 depth / 3) - 1``
(:func:`irlib.models.backbones.local_stage_index`), whose raw patch-token map takes ``layer3``'s place.
In CDConv one depthwise 3x3 kernel per channel is shared by the three dilations and the output is scaled by ``a_c``
(the hard dilation choice alone would give the attention no gradient); its ECA kernel size is ECA's adaptive
``k(C)``. Windows shrink to the map when it is smaller than ``window_size``; otherwise the map is zero-padded to a
multiple of the window and padded keys are masked. Pooled values are shifted by their per-image minimum (plus 1e-6)
to be positive (SimPool shifts by the batch minimum, which would make descriptors batch-dependent).
``alpha = -3`` (exponent (1 - alpha)/2 = 2, SimPool's gamma = 2 for CNNs) is our default.

``inspect`` keys: ``"features"`` ``(B, embed_dim, h, w)`` (final-norm tokens), ``"descriptor"`` ``(B, dim)``,
``"attention"`` ``(B, h, w)`` (pooling weights, sum 1), ``"window_attention"`` ``(B, nW, heads, N, N)`` (last
block; nW windows of N = wh*ww positions in row-major window order, padded keys 0) and ``"dilation"`` ``(B, C3)``
(the dilation each channel used in the last CDConv block).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irlib.models._registry import register_model
from irlib.models.backbones import create_backbone, feature_maps, load_backbone_weights, local_stage_index
from irlib.models.base import RetrievalModel
from irlib.models.pooling import gem


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA's adaptive 1D kernel size, the odd number nearest |(log2 C + b) / gamma| (Wang et al., CVPR 2020)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def alpha_mean(values: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """Weighted alpha-mean ``f^-1(sum_j w_j f(v_j))``, ``f(x) = x^((1-alpha)/2)`` or ``ln x`` at alpha = 1
    (SimPool, Psomas et al., ICCV 2023); ``values`` ``(B, N, C)`` positive, ``weights`` ``(B, N)`` -> ``(B, C)``."""
    w = weights.unsqueeze(-1)
    if alpha == 1:
        return (w * values.log()).sum(dim=1).exp()
    p = (1.0 - alpha) / 2.0
    return (w * values.pow(p)).sum(dim=1).pow(1.0 / p)


class ChannelDilatedConv(nn.Module):
    """Depthwise 3x3 conv whose dilation each channel picks from its ECA attention: (B,C,h,w) -> (B,C,h,w)."""

    def __init__(
        self,
        channels: int,
        thresholds: tuple[float, float] = (0.75, 0.5),
        dilations: tuple[int, int, int] = (1, 3, 6),
    ) -> None:
        super().__init__()
        self.thresholds = thresholds
        self.dilations = dilations
        self.weight = nn.Parameter(torch.empty(channels, 1, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        k = eca_kernel_size(channels)
        self.eca = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def channel_attention(self, x: Tensor) -> Tensor:
        """ECA attention ``(B, C, h, w)`` -> ``(B, C)`` in (0, 1)."""
        return torch.sigmoid(self.eca(x.mean(dim=(-2, -1)).unsqueeze(1))).squeeze(1)

    def dilation_choice(self, attention: Tensor) -> Tensor:
        """``(B, C)`` attention -> ``(B, C)`` index into ``dilations`` (0 if a > t1, 1 if t2 < a <= t1, else 2)."""
        t1, t2 = self.thresholds
        return (attention <= t1).long() + (attention <= t2).long()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, h, w)`` -> (output ``(B, C, h, w)``, dilation per channel ``(B, C)``)."""
        a = self.channel_attention(x)
        choice = self.dilation_choice(a)
        convs = torch.stack(
            [F.conv2d(x, self.weight, None, padding=d, dilation=d, groups=x.shape[1]) for d in self.dilations], dim=-1
        )
        select = F.one_hot(choice, len(self.dilations)).to(x.dtype)[:, :, None, None, :]
        out = (convs * select).sum(dim=-1) * a[:, :, None, None] + self.bias[:, None, None]
        return out, torch.tensor(self.dilations, device=x.device)[choice]


class CDConvBlock(nn.Module):
    """Residual ``X + BN(Conv1x1(GELU(BN(CDConv(X)))))``: (B,C,h,w) -> ((B,C,h,w), dilations (B,C))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cdconv = ChannelDilatedConv(channels)
        self.norm1 = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, dilation = self.cdconv(x)
        return x + self.norm2(self.pw(F.gelu(self.norm1(y)))), dilation


class MultiScaleContextKernel(nn.Module):
    """``Conv1x1(concat(X, DW_d1(X), DW_d2(X), DW_d3(X)))`` with dilated depthwise 3x3 convs: (B,C,h,w) -> same.

    No biases: the kernel makes the attention keys, and a constant added to every key cancels in the softmax over
    keys, so a bias here would never receive a gradient.
    """

    def __init__(self, channels: int, rates: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=r, dilation=r, groups=channels, bias=False) for r in rates
        )
        self.fuse = nn.Conv2d(channels * (len(rates) + 1), channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([x] + [branch(x) for branch in self.branches], dim=1))


def _windows(x: Tensor, wh: int, ww: int) -> Tensor:
    """(B, Hp, Wp, C) -> (B, nW, wh*ww, C), windows in row-major order."""
    b, hp, wp, c = x.shape
    x = x.view(b, hp // wh, wh, wp // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (hp // wh) * (wp // ww), wh * ww, c)


def _unwindow(x: Tensor, hp: int, wp: int, wh: int, ww: int) -> Tensor:
    """(B, nW, wh*ww, C) -> (B, Hp, Wp, C)."""
    b, _, _, c = x.shape
    x = x.view(b, hp // wh, wp // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, c)


class LocalTransformerBlock(nn.Module):
    """Pre-norm SCALA-style block: window attention with MCK-context keys + MLP, (B,H,W,C) -> (B,H,W,C)."""

    def __init__(self, dim: int, heads: int, window_size: int = 7, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mck = MultiScaleContextKernel(dim)
        self.relative_bias = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_bias, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _relative_index(self, wh: int, ww: int, device: torch.device) -> Tensor:
        """(N, N) indices into ``relative_bias`` for a wh x ww window."""
        ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])
        rel = coords[:, :, None] - coords[:, None, :] + self.window_size - 1
        return rel[0] * (2 * self.window_size - 1) + rel[1]

    def attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Window attention on normalised tokens (B,H,W,C) -> (output (B,H,W,C), weights (B,nW,heads,N,N))."""
        b, h, w, c = x.shape
        wh, ww = min(self.window_size, h), min(self.window_size, w)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k = self.mck(k.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        pad_h, pad_w = -h % wh, -w % ww
        valid = torch.ones(1, h, w, 1, device=x.device, dtype=x.dtype)
        if pad_h or pad_w:
            q, k, v, valid = (F.pad(t, (0, 0, 0, pad_w, 0, pad_h)) for t in (q, k, v, valid))
        hp, wp = h + pad_h, w + pad_w
        q, k, v = (_windows(t, wh, ww).unflatten(-1, (self.heads, -1)).transpose(2, 3) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(c // self.heads)
        scores = scores + self.relative_bias[self._relative_index(wh, ww, x.device)].permute(2, 0, 1)
        key_valid = _windows(valid, wh, ww)[..., 0][:, :, None, None, :]
        weights = scores.masked_fill(key_valid == 0, float("-inf")).softmax(dim=-1)
        out = _unwindow((weights @ v).transpose(2, 3).flatten(-2), hp, wp, wh, ww)[:, :h, :w]
        return self.proj(out), weights

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B,H,W,C) tokens -> (tokens (B,H,W,C), window attention (B,nW,heads,N,N))."""
        attended, weights = self.attention(self.norm1(x))
        x = x + attended
        return x + self.mlp(self.norm2(x)), weights


class AlphaAttentionPool(nn.Module):
    """Attention-based alpha-pooling (ULTRON eqs. 9-12 after SimPool): (B,C,h,w) -> ((B,C), weights (B,h,w))."""

    alpha: Tensor

    def __init__(self, dim: int, alpha: float = -3.0, gamma: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.eps = eps
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        query = self.to_q(gem(x, self.gamma, self.eps))
        weights = (self.to_k(tokens) @ query.unsqueeze(-1)).squeeze(-1).div(math.sqrt(c)).softmax(dim=-1)
        values = tokens - tokens.amin(dim=(1, 2), keepdim=True) + self.eps
        return alpha_mean(values, weights, float(self.alpha)), weights.view(b, h, w)


@register_model("ultron")
class ULTRON(RetrievalModel):
    """ULTRON-style hybrid: CNN (to stride 16) + CDConv + local transformer + alpha-pooling -> (B, ``dim``).

    ``cd_depth`` CDConv blocks, ``depth`` transformer blocks of width ``embed_dim`` with ``heads`` heads and
    ``window_size`` windows, ``alpha``/``gamma`` of the pooling. ``weights``: a local state dict of the whole model
    (keys ``backbone.*``, loaded strictly) or of the full timm backbone (its layers past stride 16 are dropped).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        dim: int = 512,
        embed_dim: int = 512,
        depth: int = 5,
        heads: int = 16,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        cd_depth: int = 2,
        alpha: float = -3.0,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.build_backbone(backbone, pretrained)
        self._stage3 = local_stage_index(self.backbone)
        c3 = int(self.backbone.feature_info[self._stage3]["num_chs"])
        self.backbone.prune_intermediate_layers(indices=[self._stage3], prune_norm=True, prune_head=True)
        self.cdconv = nn.ModuleList(CDConvBlock(c3) for _ in range(cd_depth))
        self.merge = nn.Conv2d(c3, embed_dim, 2, stride=2)
        self.merge_norm = nn.LayerNorm(embed_dim)
        self.blocks = nn.ModuleList(
            LocalTransformerBlock(embed_dim, heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.pool = AlphaAttentionPool(embed_dim, alpha=alpha, gamma=gamma)
        self.head = nn.Linear(embed_dim, dim)
        self.feat_dim: int = dim

    def load_backbone_state(self, state_dict: dict[str, Tensor], source: str) -> bool:
        """A bare backbone file holds the full timm backbone: checked strictly against an unpruned copy, then its
        layers up to the stride-16 cut are kept."""
        full, _ = create_backbone(self.config["backbone"])
        bgr = load_backbone_weights(full, state_dict, source)
        kept = self.backbone.state_dict().keys()
        self.backbone.load_state_dict({k: v for k, v in full.state_dict().items() if k in kept}, strict=True)
        return bgr

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(B,3,H,W) -> (features (B,E,h,w), last window attention, last CDConv dilations)."""
        (y,) = feature_maps(self.backbone, self.to_backbone_order(x), [self._stage3], intermediates_only=True)
        dilation = None
        for block in self.cdconv:
            y, dilation = block(y)
        tokens = self.merge_norm(self.merge(y).permute(0, 2, 3, 1))
        window_attention = None
        for block in self.blocks:
            tokens, window_attention = block(tokens)
        return self.norm(tokens).permute(0, 3, 1, 2), window_attention, dilation

    def forward_features(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B, embed_dim, h, w) final-norm transformer tokens (stride 32)."""
        return self._encode(x)[0]

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) normalised images -> (B,D) L2-normalised descriptors, D = ``feat_dim``."""
        return F.normalize(self.head(self.pool(self.forward_features(x))[0]), dim=-1)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        """``"features"``, ``"descriptor"``, ``"attention"`` (B,h,w), and when present ``"window_attention"``
        (B,nW,heads,N,N) and ``"dilation"`` (B,C3)."""
        features, window_attention, dilation = self._encode(x)
        pooled, attention = self.pool(features)
        out = {"features": features, "descriptor": F.normalize(self.head(pooled), dim=-1), "attention": attention}
        if window_attention is not None:
            out["window_attention"] = window_attention
        if dilation is not None:
            out["dilation"] = dilation
        return out

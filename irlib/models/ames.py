"""AMES (Suma, Kordopatis-Zilos, Iscen, Tolias, ECCV 2024): a transformer that scores an image pair from the local
descriptors of both images, to rerank a global shortlist with binary database descriptors of about 1 KB per image.

The pieces (``pavelsuma/ames`` ``src/models/{matcher,binarization_layer,transformer_dec}.py``, methods.md §12):

- detector: DELF's attention (:class:`irlib.models.delg.DELGAttention`) times the feature's L2 norm scores every
  position of a retrieval model's ``(B, C, h, w)`` feature map (all scales); an image keeps its ``n`` best positions
  (``n_query`` for a query, ``n_db`` for a database image: the asymmetry);
- binariser: ``sign((l2n(f) - mu) W)`` to ``bits`` = 128 bits, ``W`` initialised by ITQ (Gong & Lazebnik, CVPR
  2011) as the official ``BinarizationLayer``; a database image is stored as its packed bits (:class:`BinaryLocals`);
- projection: Linear(bits -> model_dim) -> LayerNorm makes the tokens;
- matcher: the sequence [matching token; query tokens; database tokens] through post-norm decoder layers
  (``x = LN(x + SA(x)); x = LN(x + CA(x)); x = LN(x + FFN(x))``, ReLU), self-attention within an image and
  cross-attention between the images, the matching token attending to everything in both; the matching token's
  output -> Linear -> the logit. :func:`rerank_score` is the paper's ``λ·s_global + (1 − λ)·sigmoid(γ·logit)``.

What differs from the official code, and why:

- The official binarised ("dist") models binarise both sides with the same layer; so does this one: the query keeps
  ``n_query`` > ``n_db`` descriptors but they are binary too (computed at query time, never stored).
- ``mu``, the mean of the normalised training locals, is subtracted before the projection (the official layer has no
  bias): the CNN features here are non-negative, and uncentred, the leading direction sets almost every bit alike.
- The binariser's forward pass is the sign in training too; its gradient is that of ``tanh(z / tau)`` (a
  straight-through estimator; the official trainable layer uses ``erf(z / sqrt(2 sigma))`` in training).
- The top-``n`` selection passes no gradient, so the detector trains by its own loss: a contrastive loss on the
  attention-pooled image vectors ``l2n(sum_i a_i l2n(f_i))`` (as HOW, Tolias et al. ECCV 2020, trains its attention);
  the official code ships separately trained detectors.
- The defaults are smaller than the paper's (5 layers, FFN 1024, model_dim 128, up to 600 descriptors) so that
  reranking a 1,000-image shortlist for 70 queries takes seconds on 2 CPU cores; every size is a config field.
- The masks are realised by computing the attention blocks they allow (:class:`MatchingTransformer`), so work that
  depends on one image only (the first self-attention) is done once per image, and the last layer updates only the
  matching token; the result equals the masked full-sequence computation (tested).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from irlib.io import atomic_path
from irlib.models.backbones import load_state_dict_strict, load_torch_file
from irlib.models.delg import DELGAttention

FORMAT = "irlib.ames"
"""The ``format`` entry of a reranker file (:func:`save_reranker`)."""
COUNT_BYTES = 2
"""Bytes stored per database image besides its codes: the number of valid descriptors (uint16)."""


@dataclass(frozen=True)
class AMESConfig:
    """The sizes of an AMES reranker.

    Attributes:
        in_dim: channels C of the retrieval model's feature map (the local descriptors).
        bits: binary code length (128 = 16 bytes per local descriptor, AMES's).
        model_dim: token size (AMES: 128).
        heads, layers, ffn: attention heads, decoder layers and FFN width (AMES: 2, 5, 1024).
        detector_hidden: hidden channels of the DELF attention detector.
        n_query, n_db: local descriptors kept per query / database image (database bytes: ``n_db * bits / 8 + 2``).
        tau: temperature of the binariser's straight-through gradient ``d tanh(z / tau) / dz``.
    """

    in_dim: int
    bits: int = 128
    model_dim: int = 32
    heads: int = 2
    layers: int = 2
    ffn: int = 64
    detector_hidden: int = 32
    n_query: int = 64
    n_db: int = 32
    tau: float = 0.1

    def __post_init__(self) -> None:
        for name in ("in_dim", "bits", "model_dim", "heads", "layers", "ffn", "detector_hidden", "n_query", "n_db"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AMESConfig.{name} must be a positive integer, got {value!r}")
        if self.bits % 8:
            raise ValueError(f"AMESConfig.bits must be a multiple of 8 (codes are stored as bytes), got {self.bits}")
        if self.in_dim < self.bits:
            raise ValueError(
                f"AMESConfig.in_dim ({self.in_dim}) must be >= bits ({self.bits}): ITQ projects onto "
                f"the leading {self.bits} principal directions"
            )
        if self.model_dim % self.heads:
            raise ValueError(f"AMESConfig.model_dim ({self.model_dim}) must be divisible by heads ({self.heads})")
        if self.n_db >= 1 << (8 * COUNT_BYTES):
            raise ValueError(f"AMESConfig.n_db must be below {1 << (8 * COUNT_BYTES)}, got {self.n_db}")
        if not self.tau > 0:
            raise ValueError(f"AMESConfig.tau must be positive, got {self.tau!r}")

    @property
    def bytes_per_db_image(self) -> int:
        """Storage of one database image: ``n_db`` codes of ``bits / 8`` bytes and the uint16 count."""
        return self.n_db * self.bits // 8 + COUNT_BYTES


# --- binary codes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryLocals:
    """Packed binary local descriptors of ``n`` images, padded to ``N`` per image.

    Attributes:
        codes: ``(n, N, bits / 8)`` uint8, ``numpy.packbits`` of each code (bit 1 = +1), zero rows as padding.
        counts: ``(n,)`` uint16, the valid descriptors of each image (its first ``counts[i]`` rows).
        source: what produced them (the reranker file's SHA-256), checked by the reranker that reads them.
    """

    codes: np.ndarray
    counts: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if self.codes.ndim != 3 or self.codes.dtype != np.uint8:
            raise ValueError(f"codes must be (n, N, bytes) uint8, got {self.codes.dtype} {self.codes.shape}")
        if self.counts.shape != self.codes.shape[:1] or (self.counts > self.codes.shape[1]).any():
            raise ValueError(f"counts must be (n,) = {self.codes.shape[:1]} values <= N = {self.codes.shape[1]}")

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def bytes_per_image(self) -> int:
        """Stored bytes per image: ``N * bits / 8`` of codes and the uint16 count."""
        return self.codes.shape[1] * self.codes.shape[2] + COUNT_BYTES

    def take(self, ids: np.ndarray) -> BinaryLocals:
        """The images ``ids`` (in that order)."""
        return BinaryLocals(self.codes[ids], self.counts[ids], self.source)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(codes ±1 (n, N, bits) float32, padding (n, N) bool)`` for :meth:`AMES.encode`."""
        return unpack_codes(self.codes).to(device), padding_mask(
            torch.from_numpy(self.counts.astype(np.int64)), self.codes.shape[1]
        ).to(device)


def pack_codes(codes: Tensor, counts: Tensor) -> BinaryLocals:
    """``codes (n, N, bits)`` ±1 with ``counts (n,)`` valid rows -> :class:`BinaryLocals` (padding rows zeroed)."""
    valid = ~padding_mask(counts, codes.shape[1])
    bits = (codes > 0) & valid[..., None]
    packed = np.packbits(bits.cpu().numpy(), axis=-1)
    return BinaryLocals(packed, counts.cpu().numpy().astype(np.uint16))


def unpack_codes(packed: np.ndarray) -> Tensor:
    """``(..., bits / 8)`` uint8 -> ``(..., bits)`` float32 ±1."""
    return torch.from_numpy(np.unpackbits(packed, axis=-1).astype(np.float32) * 2 - 1)


def padding_mask(counts: Tensor, n: int) -> Tensor:
    """``(B, n)`` bool, True where position ``j >= counts[b]`` (padding)."""
    return torch.arange(n, device=counts.device)[None, :] >= counts[:, None]


# --- local feature head ---------------------------------------------------------------------------------------------


def itq(x: Tensor, bits: int, iters: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011): ``(mean (C,), W (C, bits))`` such that
    ``sign((x - mean) W)`` are balanced, low-distortion codes: PCA to ``bits`` dimensions, then the rotation ``R``
    minimising ``||B - V R||`` by alternating ``B = sign(V R)`` and orthogonal Procrustes. ``x``: ``(n, C)``."""
    x = x.double()
    mean = x.mean(0)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    pca = vectors[:, -bits:].flip(1)  # leading principal directions first
    v = centred @ pca
    generator = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(bits, bits, generator=generator, dtype=torch.float64))[0]
    for _ in range(iters):
        b = torch.where(v @ rotation >= 0, 1.0, -1.0).double()
        u, _, vt = torch.linalg.svd(b.T @ v)
        rotation = (u @ vt).T
    return mean.float(), (pca @ rotation).float()


class Binariser(nn.Module):
    """``(..., C)`` local descriptors -> ``(..., bits)`` ±1: ``sign((l2n(x) - mu) W)`` (sign(0) = +1).

    The forward pass is the sign in training as at test (what the database stores); the backward pass is the gradient
    of ``tanh(z / tau)`` (straight-through). ``mu`` is a buffer (the training mean, set by :meth:`init_itq`), not
    trained on purpose: it only centres the codes.
    """

    def __init__(self, in_dim: int, bits: int, tau: float) -> None:
        super().__init__()
        self.tau = tau
        self.weight = nn.Parameter(torch.randn(in_dim, bits) / in_dim**0.5)
        self.register_buffer("mu", torch.zeros(in_dim))

    @torch.no_grad()
    def init_itq(self, x: Tensor, seed: int = 0) -> None:
        """Set ``mu`` and ``W`` by :func:`itq` on local descriptors ``x (n, C)`` (L2-normalised here)."""
        self.mu.copy_(F.normalize(x.float(), dim=-1).mean(0))
        self.weight.copy_(itq(F.normalize(x.float(), dim=-1), self.weight.shape[1], seed=seed)[1])

    def forward(self, x: Tensor) -> Tensor:
        z = (F.normalize(x, dim=-1) - self.mu) @ self.weight
        soft = torch.tanh(z / self.tau)
        return soft + (torch.where(z >= 0, 1.0, -1.0) - soft).detach()


# --- matching transformer ---------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention split into projection (:meth:`qkv`) and attention (:meth:`attend`), so that keys of one
    image can be projected once and attended from many pairs."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, L, d)`` -> queries, keys, values, each ``(B, heads, L, d / heads)``."""
        b, n, d = x.shape
        q, k, v = self.in_proj(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def attend(self, q: Tensor, parts: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
        """Queries ``(B, h, L, dh)`` over the keys and values of several ``parts`` ``(k (B, h, Lk, dh), v, allowed
        (B, Lk) bool)`` taken together (False: a key to ignore, e.g. padding) -> ``(B, L, d)`` after the output
        projection. One query row (the matching token) is computed from each part's scores, without joining the
        parts' keys and values."""
        if q.shape[2] == 1:
            scores = torch.cat(
                [(q @ k.transpose(-1, -2)).masked_fill(~a[:, None, None, :], -torch.inf) for k, _, a in parts], -1
            )
            weights = torch.softmax(scores * q.shape[-1] ** -0.5, dim=-1).split([k.shape[2] for k, _, _ in parts], -1)
            out = sum(w @ v for w, (_, v, _) in zip(weights, parts, strict=True))
        else:
            k, v, allowed = (torch.cat(t, dim=-2 if i < 2 else -1) for i, t in enumerate(zip(*parts, strict=True)))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :])
        return self.out_proj(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    """One AMES decoder layer's modules (post-norm; ``transformer_dec.py`` with ``normalize_before=False``)."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def feed_forward(self, x: Tensor) -> Tensor:
        """``LN(x + FFN(x))``."""
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


@dataclass
class ImageState:
    """One image of a pair up to the first cross-attention, which depends on that image alone.

    Attributes:
        tokens: ``(B, N, d)`` after the first layer's self-attention.
        sa_kv: that self-attention's keys and values of the input tokens ``(B, h, N, dh)`` (the matching token reads
            them).
        ca_qkv: the first cross-attention's projections of ``tokens``.
        allowed: ``(B, N)`` bool, False on padding.
    """

    tokens: Tensor
    sa_kv: tuple[Tensor, Tensor]
    ca_qkv: tuple[Tensor, Tensor, Tensor]
    allowed: Tensor

    def take(self, index: Tensor) -> ImageState:
        """The states of rows ``index`` (e.g. a shortlist of database images), copied."""
        return self._map(lambda t: t[index])

    def repeat(self, row: int, n: int) -> ImageState:
        """Row ``row`` as a batch of ``n`` pairs, as views (one query against a shortlist)."""
        return self._map(lambda t: t[row : row + 1].expand(n, *t.shape[1:]))

    def _map(self, fn: Callable[[Tensor], Tensor]) -> ImageState:
        return ImageState(
            fn(self.tokens),
            (fn(self.sa_kv[0]), fn(self.sa_kv[1])),
            (fn(self.ca_qkv[0]), fn(self.ca_qkv[1]), fn(self.ca_qkv[2])),
            fn(self.allowed),
        )


Part = tuple[Tensor, Tensor, Tensor]
"""Keys ``(B, h, N, dh)``, values and ``allowed (B, N)`` of one group of tokens (:meth:`Attention.attend`)."""


class MatchingTransformer(nn.Module):
    """The AMES decoder over ``[m; q_1..q_Nq; x_1..x_Nx]`` with AMES's masks, computed block by block.

    Self-attention: ``q_i`` reads ``[m; q]``, ``x_j`` reads ``[m; x]``; cross-attention: ``q_i`` reads ``[m; x]``,
    ``x_j`` reads ``[m; q]``; ``m`` reads everything in both; padded keys are never read. This is exactly the masked
    full-sequence decoder of ``matcher.py`` (``sa_mask``, ``ca_mask``, ``src_key_padding_mask``), minus work whose
    result the logit does not read and blocks the masks forbid: the first self-attention of an image's tokens is done
    once per image (:meth:`encode`) and the last layer's cross-attention and FFN update the matching token only.
    """

    def __init__(self, dim: int, heads: int, layers: int, ffn: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.empty(1, 1, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn) for _ in range(layers))
        self.classifier = nn.Linear(dim, 1)

    def _token_part(self, attn: Attention, b: int) -> tuple[Tensor, Part]:
        """The initial matching token's query and its part ``(k, v, allowed)`` under ``attn``, for ``b`` pairs."""
        q, k, v = (t.expand(b, -1, -1, -1) for t in attn.qkv(self.token))
        return q, (k, v, self.token.new_ones(b, 1, dtype=torch.bool))

    def encode(self, tokens: Tensor, padding: Tensor) -> ImageState:
        """``tokens (B, N, d)``, ``padding (B, N)`` -> the image's :class:`ImageState`."""
        first = self.layers[0]
        _, token = self._token_part(first.self_attn, len(tokens))
        q, k, v = first.self_attn.qkv(tokens)
        out = first.norm1(tokens + first.self_attn.attend(q, [token, (k, v, ~padding)]))
        return ImageState(out, (k, v), first.cross_attn.qkv(out), ~padding)

    def forward(self, query: ImageState, db: ImageState) -> Tensor:
        """Aligned batches of query and database states -> ``(B,)`` logits."""
        first = self.layers[0]
        mq, token = self._token_part(first.self_attn, len(query.tokens))
        q_part, x_part = (*query.sa_kv, query.allowed), (*db.sa_kv, db.allowed)
        m = first.norm1(self.token + first.self_attn.attend(mq, [token, q_part, x_part]))
        q, x = query.tokens, db.tokens
        q_qkv, x_qkv = query.ca_qkv, db.ca_qkv
        for i, layer in enumerate(self.layers):
            if i:
                m, q, x = self._self_attention(layer, m, q, x, query.allowed, db.allowed)
                q_qkv, x_qkv = layer.cross_attn.qkv(q), layer.cross_attn.qkv(x)
            last = i == len(self.layers) - 1
            m, q, x = self._cross_attention(layer, m, q, x, q_qkv, x_qkv, query.allowed, db.allowed, not last)
        return self.classifier(m[:, 0]).squeeze(-1)

    @staticmethod
    def _self_attention(
        layer: DecoderLayer, m: Tensor, q: Tensor, x: Tensor, q_allowed: Tensor, x_allowed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``LN(t + SA(t))`` for the matching token (all keys) and each image's tokens (their image's keys)."""
        attn = layer.self_attn
        (mq, mk, mv), (qq, qk, qv), (xq, xk, xv) = attn.qkv(m), attn.qkv(q), attn.qkv(x)
        token = (mk, mv, q_allowed.new_ones(len(m), 1))
        q_part, x_part = (qk, qv, q_allowed), (xk, xv, x_allowed)
        return (
            layer.norm1(m + attn.attend(mq, [token, q_part, x_part])),
            layer.norm1(q + attn.attend(qq, [token, q_part])),
            layer.norm1(x + attn.attend(xq, [token, x_part])),
        )

    @staticmethod
    def _cross_attention(
        layer: DecoderLayer,
        m: Tensor,
        q: Tensor,
        x: Tensor,
        q_qkv: tuple[Tensor, Tensor, Tensor],
        x_qkv: tuple[Tensor, Tensor, Tensor],
        q_allowed: Tensor,
        x_allowed: Tensor,
        update_images: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``LN(t + CA(t))`` then the FFN, for the matching token and, with ``update_images``, each image's tokens
        (reading the other image's keys)."""
        attn = layer.cross_attn
        mq, mk, mv = attn.qkv(m)
        (qq, qk, qv), (xq, xk, xv) = q_qkv, x_qkv
        token = (mk, mv, q_allowed.new_ones(len(m), 1))
        q_part, x_part = (qk, qv, q_allowed), (xk, xv, x_allowed)
        m_out = layer.feed_forward(layer.norm2(m + attn.attend(mq, [token, q_part, x_part])))
        if not update_images:
            return m_out, None, None
        q_out = layer.feed_forward(layer.norm2(q + attn.attend(qq, [token, x_part])))
        x_out = layer.feed_forward(layer.norm2(x + attn.attend(xq, [token, q_part])))
        return m_out, q_out, x_out


def _init_weights(module: nn.Module) -> None:
    """The official ``_init_weights``: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class AMES(nn.Module):
    """Detector, binariser, projection and matching transformer (module docstring); ``config``: :class:`AMESConfig`.

    Use: :meth:`detect` scores positions, :meth:`select` keeps an image's best ``n`` and binarises them, :meth:`encode`
    turns ±1 codes into an :class:`ImageState`, :meth:`match` scores aligned pairs of states; ``forward`` chains the
    last two (training).
    """

    def __init__(self, config: AMESConfig) -> None:
        super().__init__()
        self.config = config
        self.detector = DELGAttention(config.in_dim, config.detector_hidden)
        self.binariser = Binariser(config.in_dim, config.bits, config.tau)
        self.project = nn.Sequential(nn.Linear(config.bits, config.model_dim), nn.LayerNorm(config.model_dim))
        self.matcher = MatchingTransformer(config.model_dim, config.heads, config.layers, config.ffn)
        self.project.apply(_init_weights)
        self.matcher.apply(_init_weights)
        nn.init.trunc_normal_(self.matcher.token, std=0.02)

    @torch.no_grad()
    def init_for_matching(self, scale: float = 1.0, seed: int = 0) -> None:
        """Start the cross-attention as a code-similarity matcher: the projection's weight an orthogonal projection of
        the bits (scaled to keep the tokens' variance), every cross-attention's queries = keys = ``scale`` x identity
        and values = output = identity, so a token attends from the first step to the other image's most similar
        codes (the matching token's key being the "no match" option).

        With the official initialisation (truncated normal, std 0.02) a matcher learns to compare codes only after a
        long training (measured on synthetic code sets: no progress in 1,600 steps at telling whether 8 of 32 codes
        are noisy copies of the query's); from this one it learns that in a few hundred steps. The rest of the model
        keeps the official initialisation."""
        d, bits = self.config.model_dim, self.config.bits
        generator = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(max(d, bits), min(d, bits), generator=generator))[0]  # orthonormal columns
        self.project[0].weight.copy_((basis.T if d <= bits else basis) * (bits / d) ** 0.5)
        eye = torch.eye(d)
        for layer in self.matcher.layers:
            layer.cross_attn.in_proj.weight.copy_(torch.cat([scale * eye, scale * eye, eye]))
            layer.cross_attn.out_proj.weight.copy_(eye)

    def detect(self, positions: Tensor) -> Tensor:
        """``(P, C)`` local features at P positions (any image, any scale) -> ``(P,)`` non-negative attention: the
        feature's L2 norm (HOW's attention, Tolias et al. ECCV 2020) times DELF's learned attention, which starts
        nearly constant, so selection starts from the norm's choice and learns from there."""
        return self.detector(positions.T[None, :, :, None]).reshape(-1) * positions.norm(dim=-1)

    def select(self, positions: Tensor, scores: Tensor, n: int) -> Tensor:
        """The binary codes ``(min(n, P), bits)`` ±1 of the ``n`` positions with the highest ``scores``, best first.
        The selection passes no gradient to the detector (it trains by :func:`attention_pooled`)."""
        top = torch.topk(scores.detach(), min(n, len(scores))).indices
        return self.binariser(positions[top])

    def encode(self, codes: Tensor, padding: Tensor) -> ImageState:
        """``codes (B, N, bits)`` ±1 with ``padding (B, N)`` -> :class:`ImageState`."""
        return self.matcher.encode(self.project(codes), padding)

    def match(self, query: ImageState, db: ImageState) -> Tensor:
        """Aligned query and database states (batch B) -> ``(B,)`` logits."""
        return self.matcher(query, db)

    def forward(self, q_codes: Tensor, q_padding: Tensor, x_codes: Tensor, x_padding: Tensor) -> Tensor:
        """``(B, Nq, bits)``, ``(B, Nq)``, ``(B, Nx, bits)``, ``(B, Nx)`` -> ``(B,)`` logits of the pairs."""
        return self.match(self.encode(q_codes, q_padding), self.encode(x_codes, x_padding))


def attention_pooled(positions: Tensor, attention: Tensor) -> Tensor:
    """An image's attention-pooled vector ``l2n(sum_i a_i l2n(f_i))`` ``(C,)`` from ``positions (P, C)`` and their
    attention ``(P,)`` (HOW, Tolias et al., ECCV 2020): what the detector's own loss compares."""
    return F.normalize((attention[:, None] * F.normalize(positions, dim=-1)).sum(0), dim=-1)


def rerank_score(global_sim: Tensor, logits: Tensor, lam: float, gamma: float) -> Tensor:
    """AMES's ensemble ``λ·s_global + (1 − λ)·sigmoid(γ·logit)`` (``src/utils/metrics.py``), element-wise."""
    return lam * global_sim + (1 - lam) * torch.sigmoid(gamma * logits)


# --- reranker files -----------------------------------------------------------------------------------------------


def save_reranker(model: AMES, path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``{"format", "config", "state_dict", **meta}`` atomically (tensors and plain values only: the file loads
    with ``weights_only=True``). ``meta`` holds what the reranker was trained with (``lam``, ``gamma``, the
    retrieval model's fingerprint and extraction settings, ...)."""
    payload = {"format": FORMAT, "config": dataclasses.asdict(model.config), "state_dict": model.state_dict(), **meta}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_reranker(path: str | os.PathLike) -> tuple[AMES, dict[str, Any]]:
    """``(model in eval mode, meta)`` from a file of :func:`save_reranker`, loaded strictly; anything else raises
    ValueError (or FileNotFoundError) naming the file and what was expected."""
    payload = load_torch_file(path, "AMES reranker file")
    where = os.fspath(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{where} is not an AMES reranker file: expected a mapping with format {FORMAT!r} (written by "
            f"irlib.train.reranker), got {got!r}"
        )
    for key, kind in (("config", dict), ("state_dict", dict)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{where}: field {key!r} is missing or not a mapping")
    try:
        config = AMESConfig(**payload["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: field 'config' is not a valid AMESConfig: {err}") from None
    model = AMES(config)
    load_state_dict_strict(model, payload["state_dict"], where)
    meta = {k: v for k, v in payload.items() if k not in ("format", "config", "state_dict")}
    return model.eval(), meta

"""Where a model looks: Grad-CAM of a retrieval descriptor, the models' own inspection maps (attention, feature
norms), overlays on the image and side-by-side panels for several methods on the same images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor, nn

from irlib.models.backbones import is_vit_backbone, patch_grid
from irlib.models.base import RetrievalModel, frozen_eval, last_feature_layer
from irlib.models.gem import GeMNet

__all__ = ["activation_map", "default_layer", "grad_cam", "overlay", "plot_attention", "preprocess"]


def preprocess(model: RetrievalModel, image: Image.Image, size: int = 224) -> Tensor:
    """``(1, 3, H, W)`` input: ``image`` resized so its longer side is ``size`` and normalised with the model's
    ``data_config`` mean/std (RGB, [0, 1] pixels)."""
    img = image.convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(model.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _upsample(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """``(h, w)`` map -> ``(H, W)``, bilinear."""
    return F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]


def _unit(m: Tensor) -> np.ndarray:
    """Min-max scaled to [0, 1]; all zeros when flat."""
    lo, hi = m.min(), m.max()
    return ((m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)).numpy()


def default_layer(model: nn.Module, x: Tensor) -> nn.Module:
    """Grad-CAM's default layer: the backbone's final feature map (:func:`irlib.models.base.last_feature_layer`),
    the same place for every method of the zoo, however it calls its backbone.

    For a ViT backbone that is the module whose output is the final patch-token map ``(B, C, h, w)``: the backbone
    itself, or its ``token_map`` (or ``intermediate_map``, for ULTRON cut at an intermediate block) when the method
    calls timm's ``forward_intermediates``. Exception: a GeM model with ``pooling="cls"`` pools the class token,
    which the final patch tokens do not feed; its layer is ``backbone.blocks[-1].norm1``, the last block's normalised
    input tokens ``(B, P + h*w, C)`` (the usual ViT Grad-CAM layer), which :func:`grad_cam` reshapes to the grid."""
    cls_model = next((m for m in model.modules() if isinstance(m, GeMNet) and m.pooling == "cls"), None)
    if cls_model is not None:
        return cls_model.backbone.blocks[-1].norm1
    try:
        return last_feature_layer(model, x)[0]
    except ValueError as err:
        raise ValueError(f"{err}: pass layer=") from err


def _as_map(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    """A layer's output (or its gradient) as ``(B, C, h, w)``: maps unchanged; the ``(B, P + h*w, C)`` tokens of the
    model's ViT backbone without the P prefix tokens, on the patch grid of ``x``."""
    if t.ndim != 3:
        return t
    vit = next((m for m in model.modules() if is_vit_backbone(m)), None)
    if vit is None:
        raise ValueError(f"the layer outputs {tuple(t.shape)} tokens but {type(model).__name__} has no ViT backbone")
    h, w = patch_grid(vit, x)
    return t[:, vit.num_prefix_tokens :].transpose(1, 2).reshape(t.shape[0], -1, h, w)


def grad_cam(
    model: RetrievalModel, x: Tensor, *, target: Tensor | None = None, layer: nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of a descriptor for one image ``x`` ``(1, 3, H, W)`` -> ``(H, W)``.

    The explained scalar is the dot product of the descriptor with ``target`` ``(D,)`` (e.g. a query's descriptor,
    to see what makes a database image match it). Self-similarity with the image's own descriptor has zero gradient
    under L2 normalisation, so the default target is the detached difference between the image's descriptor and
    that of a blank (mean-colour, all-zero input) image: what sets this image apart from an empty one.
    Gradients are taken at the output of ``layer`` (default: :func:`default_layer`); when the layer runs several
    times in one forward (a multi-scale model), the maps of all its passes are upsampled and summed. A layer may
    output ``(B, C, h, w)`` maps or, inside a ViT backbone, ``(B, P + h*w, C)`` tokens (e.g. ``blocks[-1].norm1``;
    the prefix tokens are dropped and the patch tokens put on the grid of ``x``). The model's
    train/eval mode and parameters' ``requires_grad`` are restored afterwards.
    """
    captured: list[Tensor] = []
    with frozen_eval(model):
        if target is None:
            with torch.no_grad():
                target = model(x)[0] - model(torch.zeros_like(x))[0]
        layer = layer if layer is not None else default_layer(model, x)
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.enable_grad():
                explained = (model(x.detach().clone().requires_grad_(True))[0] * target.detach()).sum()
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"layer {type(layer).__name__} did not run in {type(model).__name__}.forward")
        linked = [c for c in captured if c.requires_grad]  # the passes that depend on the image
        grads = torch.autograd.grad(explained, linked, allow_unused=True) if linked else ()
    size = tuple(x.shape[-2:])
    pairs = [
        (_as_map(model, x, a.detach()), _as_map(model, x, g))
        for a, g in zip(linked, grads, strict=True)
        if g is not None
    ]
    cams = [
        _upsample(F.relu((g[0].mean(dim=(-2, -1))[:, None, None] * a[0]).sum(0)), size)  # (C,) . (C, h, w)
        for a, g in pairs
    ]
    if not cams:
        raise ValueError(f"layer {type(layer).__name__}: its output does not link the image to the descriptor")
    return _unit(torch.stack(cams).sum(0))


def activation_map(model: RetrievalModel, x: Tensor, key: str | None = None) -> np.ndarray:
    """``(H, W)`` map in [0, 1] for one image ``x`` ``(1, 3, H, W)`` from ``model.inspect``: the method's own map
    ``key`` (``(1, h, w)``, or ``(1, K, h, w)`` summed over K), by default the L2 norm of ``features`` per position."""
    with frozen_eval(model), torch.no_grad():
        maps = model.inspect(x)
    if key is None:
        m = maps["features"][0].float().norm(dim=0)
    else:
        if key not in maps:
            raise KeyError(f"{type(model).__name__}.inspect has no {key!r}; it returns {sorted(maps)}")
        m = maps[key][0].float()
        if m.ndim == 3:
            m = m.sum(0)
        if m.ndim != 2:
            raise ValueError(f"inspect()[{key!r}] is not a spatial map (shape {tuple(maps[key].shape)})")
    return _unit(_upsample(m, tuple(x.shape[-2:])))


def overlay(image: Image.Image | np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` blended with ``heatmap`` ``(H', W')`` in [0, 1] (resized to the image)."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    h, w = img.shape[:2]
    heat = np.asarray(Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize((w, h), Image.BILINEAR))
    colored = colormaps[cmap](np.clip(heat, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * img + alpha * colored, 0, 255).astype(np.uint8)


def plot_attention(
    models: Mapping[str, nn.Module],
    images: Sequence[Image.Image],
    *,
    method: str = "gradcam",
    size: int = 224,
    alpha: float = 0.5,
    cmap: str = "jet",
    layer: Mapping[str, nn.Module] | None = None,
) -> Figure:
    """Rows: images; columns: the resized image, then one overlay per model. ``method``: ``"gradcam"``,
    ``"activation"`` (feature norm) or a key of the models' ``inspect`` output (e.g. an attention map).
    ``layer``: Grad-CAM layers by model name (models left out use :func:`default_layer`)."""
    layer = dict(layer or {})
    if unknown := sorted(set(layer) - set(models)):
        raise ValueError(f"layer= names {unknown}, which are not among the models {list(models)}")
    if layer and method != "gradcam":
        raise ValueError(f"layer= applies to method='gradcam' only, not {method!r}")
    fig, axes = plt.subplots(
        len(images),
        len(models) + 1,
        figsize=(1.8 * (len(models) + 1), 1.8 * len(images)),
        squeeze=False,
        layout="constrained",
    )
    for row, image in zip(axes, images, strict=True):
        scale = size / max(image.size)
        shown = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        row[0].imshow(shown)
        row[0].set_title("image")
        for ax, (name, model) in zip(row[1:], models.items(), strict=True):
            x = preprocess(model, image, size)
            if method == "gradcam":
                heat = grad_cam(model, x, layer=layer.get(name))
            else:
                heat = activation_map(model, x, None if method == "activation" else method)
            ax.imshow(overlay(shown, heat, alpha, cmap))
            ax.set_title(f"{name} ({method})")
        for ax in row:
            ax.set_axis_off()
    return fig

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

__all__ = ["activation_map", "grad_cam", "overlay", "plot_attention", "preprocess"]


def preprocess(model: nn.Module, image: Image.Image, size: int = 224) -> Tensor:
    """``(1, 3, H, W)`` input: ``image`` resized so its longer side is ``size`` and normalised with the model's
    ``data_config`` mean/std (RGB, [0, 1] pixels)."""
    img = image.convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(model.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def _to_image_map(cam: Tensor, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` map -> ``(H, W)`` bilinear upsampled, min-max scaled to [0, 1] (all zeros when flat)."""
    up = F.interpolate(cam[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    return ((up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)).numpy()


def grad_cam(
    model: nn.Module, x: Tensor, *, target: Tensor | None = None, layer: nn.Module | None = None
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of a descriptor for one image ``x`` ``(1, 3, H, W)`` -> ``(H, W)``.

    The explained scalar is the dot product of the descriptor with ``target`` ``(D,)`` (e.g. a query's descriptor,
    to see what makes a database image match it). Self-similarity with the image's own descriptor has zero gradient
    under L2 normalisation, so the default target is the detached difference between the image's descriptor and
    that of a blank (mean-colour, all-zero input) image: what sets this image apart from an empty one.
    Gradients are taken at the output of ``layer`` or, by default, of ``model.forward_features``; the model's
    train/eval mode and parameters' ``requires_grad`` are restored afterwards.
    """
    captured: list[Tensor] = []

    def keep(out: Tensor) -> Tensor:
        if not captured:
            captured.append(out)
        return out

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    handle = None
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if target is None:
            with torch.no_grad():
                target = model(x)[0] - model(torch.zeros_like(x))[0]
        if layer is not None:
            handle = layer.register_forward_hook(lambda _m, _i, out: keep(out))
        else:
            original = model.forward_features
            model.forward_features = lambda inp: keep(original(inp))  # instance attribute shadows the method
        try:
            with torch.enable_grad():
                descriptor = model(x.detach().clone().requires_grad_(True))[0]
                if not captured:
                    raise ValueError(
                        f"{type(model).__name__}.forward does not call forward_features: pass layer= (the module "
                        "whose output is the feature map)"
                    )
                (grads,) = torch.autograd.grad((descriptor * target.detach()).sum(), captured[0])
        finally:
            if layer is None:
                del model.forward_features
    finally:
        if handle is not None:
            handle.remove()
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    features = captured[0].detach()[0]  # (C, h, w)
    weights = grads[0].mean(dim=(-2, -1))  # (C,)
    cam = F.relu((weights[:, None, None] * features).sum(0))
    return _to_image_map(cam, tuple(x.shape[-2:]))


def activation_map(model: nn.Module, x: Tensor, key: str | None = None) -> np.ndarray:
    """``(H, W)`` map in [0, 1] for one image ``x`` ``(1, 3, H, W)`` from ``model.inspect``: the method's own map
    ``key`` (``(1, h, w)``, or ``(1, K, h, w)`` summed over K), by default the L2 norm of ``features`` per position."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.inspect(x)
    finally:
        model.train(was_training)
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
    return _to_image_map(m, tuple(x.shape[-2:]))


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
) -> Figure:
    """Rows: images; columns: the resized image, then one overlay per model. ``method``: ``"gradcam"``,
    ``"activation"`` (feature norm) or a key of the models' ``inspect`` output (e.g. an attention map)."""
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
                heat = grad_cam(model, x)
            else:
                heat = activation_map(model, x, None if method == "activation" else method)
            ax.imshow(overlay(shown, heat, alpha))
            ax.set_title(f"{name} ({method})")
        for ax in row:
            ax.set_axis_off()
    return fig

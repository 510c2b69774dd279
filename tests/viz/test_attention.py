"""Attention figures, checked by content: Grad-CAM and activation peaks inside a planted red square, the default
Grad-CAM layer of every model of the zoo, model state restored, overlays blending the heatmap, and each panel of
the side-by-side figure peaking where its own model looks."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from irlib.models import create_model, list_models
from irlib.viz.attention import activation_map, default_layer, grad_cam, overlay, plot_attention, preprocess
from tests.models.conftest import one_thread  # noqa: F401  (fixture: R18 passes on shared cores)

WRAPPERS = ("batchformer", "batch_transformer")  # training-time wrappers: the wrapped model's backbone

SQUARE = (40, 16, 64, 40)  # x1, y1, x2, y2 of the planted red square in a 96 x 80 image


class RedDetector(nn.Module):
    """A fixed 3x3 conv whose channel 0 fires on red, channel 1 on grey background; mean pooling, L2 norm."""

    data_config = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "channel_order": "RGB"}

    def __init__(self, inverted: bool = False) -> None:
        """``inverted``: channel 0 fires on the grey background instead of red."""
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = torch.tensor([-0.5, 0.5, 0.5] if inverted else [1.0, -1.0, -1.0])
            self.conv.weight[1, :, 1, 1] = torch.tensor([0.0, 0.5, 0.5])
            self.conv.bias.copy_(torch.tensor([0.0, 0.1]))

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.forward_features(x).mean(dim=(-2, -1)), dim=-1)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        features = self.forward_features(x)
        return {"features": features, "descriptor": self(x), "red": features[:, 0], "both": features}


class GatedRedDetector(RedDetector):
    """:class:`RedDetector` with its map multiplied by a constant map from ``gate``, the last module to run."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        features = F.relu(self.conv(x))
        return features * self.gate(features[:, :1] * 0 + 1)  # depends on x, constant


def _planted() -> Image.Image:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 10, (80, 96, 3)), 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = SQUARE
    img[y1:y2, x1:x2] = (230, 20, 20)
    return Image.fromarray(img)


def _peak_in_square(heat: np.ndarray, square: tuple[float, float, float, float] = SQUARE) -> bool:
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    x1, y1, x2, y2 = square
    return x1 <= x < x2 and y1 <= y < y2


def test_grad_cam_and_activation_peak_on_the_planted_object():
    model = RedDetector()
    x = preprocess(model, _planted(), size=96)
    assert x.shape == (1, 3, 80, 96)
    cam = grad_cam(model, x)
    assert cam.shape == (80, 96) and cam.min() == 0.0 and cam.max() == 1.0
    assert _peak_in_square(cam)
    x1, y1, x2, y2 = SQUARE
    assert cam[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].min() > 0.9 and cam[:10, :10].max() < 0.1
    assert _peak_in_square(activation_map(model, x, "red"))
    assert _peak_in_square(activation_map(model, x, "both"))
    # a target descriptor pointing at the background moves the Grad-CAM off the square
    assert not _peak_in_square(grad_cam(model, x, target=torch.tensor([0.0, 1.0])))
    with pytest.raises(KeyError, match="no 'attention'"):
        activation_map(model, x, "attention")


def test_default_layer_is_the_last_feature_map_and_a_given_layer_is_used():
    model = GatedRedDetector()
    x = preprocess(model, _planted(), size=96)
    assert default_layer(model, x) is model.gate  # no backbone: the model's last (B, C, h, w) output
    assert not grad_cam(model, x).any()  # the gate's output is constant: a flat map, all zeros
    assert _peak_in_square(grad_cam(model, x, layer=model.conv))  # the given layer is the one explained
    with pytest.raises(ValueError, match="did not run"):
        grad_cam(model, x, layer=nn.Conv2d(3, 2, 1))
    with torch.no_grad():  # a caller's no_grad does not stop the explanation
        assert _peak_in_square(grad_cam(model, x, layer=model.conv))


def test_overlay_blends_heatmap_into_image():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    heat = np.zeros((10, 20), dtype=np.float32)
    heat[:, 10:] = 1.0
    out = overlay(img, heat, alpha=1.0, cmap="gray")
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert out[5, 2].max() == 0 and out[5, 18].min() == 255


def _scaled(square: tuple[int, int, int, int], scale: float) -> tuple[float, float, float, float]:
    return tuple(c * scale for c in square)  # type: ignore[return-value]


def test_plot_attention_panels_peak_where_each_model_looks():
    models = {"red": RedDetector(), "background": RedDetector(inverted=True)}
    rotated = _planted().rotate(90, expand=True)  # counter-clockwise: the square moves to x 16-40, y 32-56
    squares = [SQUARE, (16, 32, 40, 56)]
    # gray colormap, alpha 1: each overlay panel is the heatmap itself, 255 at its peak
    fig = plot_attention(models, [_planted(), rotated], method="gradcam", size=64, alpha=1.0, cmap="gray")
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["image", "red (gradcam)", "background (gradcam)"]
    for row, square in zip(axes, squares, strict=True):
        box = _scaled(square, 64 / 96)
        shown, red, background = (ax.images[0].get_array() for ax in row)
        assert shown.shape == red.shape == background.shape
        x1, y1, x2, y2 = (round(c) for c in box)
        assert (shown[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] == shown[(y1 + y2) // 2, (x1 + x2) // 2]).all()
        assert _peak_in_square(red[..., 0], box) and red[..., 0].max() == 255
        assert red[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3, 0].min() > 200 and red[:5, :5, 0].max() < 30
        assert not _peak_in_square(background[..., 0], box)
        assert background[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3, 0].max() < 30
    assert axes[1, 1].images[0].get_array().shape == (64, 53, 3)
    # an inspect() map: channel "red" of each model
    fig = plot_attention(models, [_planted()], method="red", size=48, alpha=1.0, cmap="gray")
    assert fig.axes[1].get_title() == "red (red)"
    assert _peak_in_square(fig.axes[1].images[0].get_array()[..., 0], _scaled(SQUARE, 0.5))
    assert not _peak_in_square(fig.axes[2].images[0].get_array()[..., 0], _scaled(SQUARE, 0.5))


def test_plot_attention_passes_each_models_layer_through():
    models = {"red": RedDetector(), "gated": GatedRedDetector()}
    gated = models["gated"]
    kwargs = {"size": 64, "alpha": 1.0, "cmap": "gray"}
    fig = plot_attention(models, [_planted()], **kwargs)
    assert not fig.axes[2].images[0].get_array().any()  # the gate's flat Grad-CAM: black
    fig = plot_attention(models, [_planted()], **kwargs, layer={"gated": gated.conv})
    for ax in fig.axes[1:]:
        assert _peak_in_square(ax.images[0].get_array()[..., 0], _scaled(SQUARE, 64 / 96))
    with pytest.raises(ValueError, match="not among the models"):
        plot_attention(models, [_planted()], layer={"blue": gated.conv})
    with pytest.raises(ValueError, match="gradcam"):
        plot_attention(models, [_planted()], method="activation", layer={"gated": gated.conv})


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", list_models())
def test_grad_cam_and_activation_run_on_every_model_of_the_zoo(method):
    torch.manual_seed(0)
    model = create_model(method, backbone="resnet18").train()  # random weights
    first = next(model.parameters()).requires_grad_(False)  # a frozen stem: its flag must survive
    flags = [p.requires_grad for p in model.parameters()]  # with the parts a method freezes on purpose
    x = preprocess(model, _planted(), size=160)  # 160 x 133: SuperGlobal's smallest scale still fits R-GeM
    layer = default_layer(model, x)
    names = {m: n for n, m in model.named_modules()}
    expected = {"dolg": "backbone.layer4", "ultron": "backbone.layer4"} | dict.fromkeys(WRAPPERS, "model.backbone")
    assert names[layer] == expected.get(method, "backbone")  # the backbone's last map, however forward calls it
    for heat in (grad_cam(model, x), activation_map(model, x)):
        assert heat.shape == (133, 160) and np.isfinite(heat).all() and 0.0 <= heat.min() <= heat.max() <= 1.0
    assert model.training and not first.requires_grad
    assert [p.requires_grad for p in model.parameters()] == flags

"""Attention figures, checked by content: Grad-CAM and activation peaks inside a planted red square, model state
restored, overlays blending the heatmap, one panel per image and method."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from irlib.viz.attention import activation_map, grad_cam, overlay, plot_attention, preprocess

SQUARE = (40, 16, 64, 40)  # x1, y1, x2, y2 of the planted red square in a 96 x 80 image


class RedDetector(nn.Module):
    """A fixed 3x3 conv whose channel 0 fires on red, channel 1 on grey background; mean pooling, L2 norm."""

    data_config = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "channel_order": "RGB"}

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])
            self.conv.weight[1, :, 1, 1] = torch.tensor([0.0, 0.5, 0.5])
            self.conv.bias.copy_(torch.tensor([0.0, 0.1]))

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.forward_features(x).mean(dim=(-2, -1)), dim=-1)

    def inspect(self, x: Tensor) -> dict[str, Tensor]:
        features = self.forward_features(x)
        return {"features": features, "descriptor": self(x), "red": features[:, 0], "both": features}


def _planted() -> Image.Image:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 10, (80, 96, 3)), 0, 255).astype(np.uint8)
    x1, y1, x2, y2 = SQUARE
    img[y1:y2, x1:x2] = (230, 20, 20)
    return Image.fromarray(img)


def _peak_in_square(heat: np.ndarray) -> bool:
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    x1, y1, x2, y2 = SQUARE
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


def test_grad_cam_with_a_layer_hook_matches_forward_features():
    model = RedDetector()
    x = preprocess(model, _planted(), size=96)
    # the hooked conv output is the pre-ReLU map: same peak
    assert _peak_in_square(grad_cam(model, x, layer=model.conv))


def test_overlay_blends_heatmap_into_image():
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    heat = np.zeros((10, 20), dtype=np.float32)
    heat[:, 10:] = 1.0
    out = overlay(img, heat, alpha=1.0, cmap="gray")
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert out[5, 2].max() == 0 and out[5, 18].min() == 255


def test_plot_attention_panels_per_image_and_method():
    models = {"red": RedDetector(), "red2": RedDetector()}
    fig = plot_attention(models, [_planted(), _planted().rotate(90, expand=True)], method="gradcam", size=64)
    axes = np.array(fig.axes).reshape(2, 3)
    assert [ax.get_title() for ax in axes[0]] == ["image", "red (gradcam)", "red2 (gradcam)"]
    assert axes[1, 1].images[0].get_array().shape == (64, 53, 3)
    fig = plot_attention(models, [_planted()], method="red", size=48)
    assert fig.axes[1].get_title() == "red (red)"


def test_grad_cam_on_a_zoo_model_restores_its_state():
    from irlib.models import create_model

    model = create_model("gem", backbone="efficientnet_lite0", pretrained=True)
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    x = preprocess(model, _planted(), size=96)
    cam = grad_cam(model, x)
    assert cam.shape == (80, 96) and 0.0 <= cam.min() and cam.max() <= 1.0 and np.isfinite(cam).all()
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert "forward_features" not in vars(model)
    heat = activation_map(model, x)
    assert heat.shape == (80, 96) and model.training

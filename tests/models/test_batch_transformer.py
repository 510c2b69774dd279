"""Batch Transformer wrapper: Class Batch Attention, the residual, batch-permutation equivariance, identity at eval,
gradients to every part, the paper's per-class form, weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irlib.losses import CompositeLoss, LossTerm, merge_terms
from irlib.models import create_model
from irlib.models.batch_transformer import BatchTransformer, class_batch_attention
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"


def _images(batch: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _model(**kwargs) -> BatchTransformer:
    torch.manual_seed(0)
    model = create_model("batch_transformer", backbone=BACKBONE, whitening=32, **kwargs)
    unzero_norms(model)
    return model


def test_class_batch_attention_is_a_softmax_across_the_batch_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, generator=g)
    out, attention = class_batch_attention(q, k, v)
    assert out.shape == (5, 3) and attention.shape == (3, 5, 5)
    for c in range(3):
        a = torch.softmax(q[:, c] @ k[:, c].T / 3**0.5, dim=1)  # 1/sqrt(C), C = channels, as BTN
        torch.testing.assert_close(attention[c], a)
        torch.testing.assert_close(out[:, c], a @ v[:, c])


def test_training_outputs_the_residual_and_attends_across_the_batch() -> None:
    model = _model().train()
    x = _images()
    out = model.forward_train(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "descriptor": (4, 32),
        "batch_transformer": (4, 32),
        "class_batch_attention": (4, 32),
    }
    assert model.output_dims() == {"descriptor": 32, "batch_transformer": 32, "class_batch_attention": 32}
    features = model.model.forward_features(x)  # the map the wrapper captured in the same pass
    cba, bt, attention = model.attend(features, out["descriptor"])
    torch.testing.assert_close(bt, cba + out["descriptor"])  # BT = CBA(v) + v
    torch.testing.assert_close(out["batch_transformer"], F.normalize(bt, dim=-1))
    torch.testing.assert_close(out["class_batch_attention"], F.normalize(cba, dim=-1))
    torch.testing.assert_close(attention.sum(-1), torch.ones(32, 4))
    # another image in the batch changes the first image's batch-attended output, not its descriptor
    model.eval()
    with torch.no_grad():
        a = model.forward_train(x)
        b = model.forward_train(torch.cat([x[:3], _images(1, seed=9)]))
    torch.testing.assert_close(a["descriptor"][0], b["descriptor"][0])
    assert not torch.allclose(a["class_batch_attention"][0], b["class_batch_attention"][0])


def test_permuting_the_batch_permutes_every_output() -> None:
    model = _model().train()  # BN batch statistics are permutation-invariant too
    x, perm = _images(5), torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, permuted = model.forward_train(x), model.forward_train(x[perm])
    for key, value in out.items():
        torch.testing.assert_close(permuted[key], value[perm], rtol=1e-5, atol=1e-6, msg=key)


def test_evaluation_is_the_wrapped_models_per_image_descriptor() -> None:
    model = _model().eval()
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.model(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=1e-5, atol=1e-6)  # no batch dependence
    assert model.config["base"] == "gem" and model.config["base_config"] == model.model.config
    assert (model.config["value"], model.config["grid"], model.config["descriptor_weight"]) == ("descriptor", 7, 1.0)


def test_the_runs_loss_supervises_three_streams_with_one_head_and_reaches_every_part() -> None:
    model = _model(descriptor_weight=0.5).train()
    objective = CompositeLoss(
        [LossTerm("cosface")], output_dims=model.output_dims(), num_classes=3, streams=model.descriptor_streams()
    )
    labels = torch.tensor([0, 1, 2, 1])
    out = model.forward_train(_images())
    total, _ = objective(out, labels)
    head = objective.terms["cosface"]
    expected = 0.5 * head(out["descriptor"], labels)  # λ·L + L_BT + L_CBA
    expected = expected + head(out["batch_transformer"], labels) + head(out["class_batch_attention"], labels)
    torch.testing.assert_close(total, expected)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_the_papers_per_class_form_supervises_class_logits_with_cross_entropy() -> None:
    model = _model(value="logits", num_classes=3).train()
    out = model.forward_train(_images())
    assert out["logits"].shape == out["batch_transformer"].shape == out["class_batch_attention"].shape == (4, 3)
    torch.testing.assert_close(out["logits"], model.classifier(out["descriptor"]))
    terms = model.loss_terms()
    assert [(t.name, t.on) for t in terms] == [
        ("cross_entropy", ("logits",)),
        ("cross_entropy", ("batch_transformer",)),
        ("cross_entropy", ("class_batch_attention",)),
    ]
    objective = CompositeLoss(
        merge_terms([LossTerm("arcface")], terms),
        output_dims=model.output_dims(),
        num_classes=3,
        streams=model.descriptor_streams(),
    )
    labels = torch.tensor([0, 1, 2, 1])
    total, values = objective(out, labels)
    assert set(values) == {
        "arcface",
        "cross_entropy@logits",
        "cross_entropy@batch_transformer",
        "cross_entropy@class_batch_attention",
    }
    torch.testing.assert_close(
        values["cross_entropy@batch_transformer"], F.cross_entropy(out["batch_transformer"], labels)
    )
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="needs num_classes"):
        create_model("batch_transformer", backbone=BACKBONE, value="logits")
    with pytest.raises(ValueError, match="value must be one of"):
        create_model("batch_transformer", backbone=BACKBONE, value="tokens")


def test_whole_wrapper_weights_round_trip(tmp_path) -> None:
    source = _model()
    torch.save(source.state_dict(), tmp_path / "bt.pth")
    loaded = create_model("batch_transformer", backbone=BACKBONE, whitening=32, weights=tmp_path / "bt.pth")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert {k.split(".")[0] for k in loaded.state_dict()} == {"model", "q", "k", "position"}


def test_inspect_adds_the_channel_averaged_batch_attention() -> None:
    model = _model().eval()
    with torch.no_grad():
        ins = model.inspect(_images())
    assert ins["batch_attention"].shape == (4, 4)
    torch.testing.assert_close(ins["batch_attention"].sum(-1), torch.ones(4))

"""BatchFormer wrapper: identity at eval, two training streams, gradients, weights, any wrapped method."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from irlib.losses import CompositeLoss, LossTerm, merge_terms
from irlib.models import create_model
from irlib.models.batchformer import BatchFormer
from tests.models.conftest import unzero_norms

BACKBONE = "resnet18"
BASES = {
    "gem": {"whitening": 64},
    "delg": {"dim": 64, "local_branch": True},
    "senet": {"dim": 64, "mid_dim": 16},
    "ultron": {"dim": 64, "embed_dim": 32, "depth": 1, "heads": 4, "cd_depth": 1},
}


def _images(batch: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("base", list(BASES))
def test_eval_forward_is_exactly_the_wrapped_model(base: str) -> None:
    torch.manual_seed(0)
    model = create_model("batchformer", backbone=BACKBONE, base=base, **BASES[base]).eval()
    assert isinstance(model, BatchFormer) and model.config["base"] == base and model.feat_dim == 64
    assert model.config["base_config"] == model.model.config and model.data_config == model.model.data_config
    with torch.no_grad():
        assert torch.equal(model(_images()), model.model(_images()))


def test_wraps_a_built_model_and_exposes_two_streams() -> None:
    torch.manual_seed(0)
    inner = create_model("gem", backbone=BACKBONE, whitening=32)
    model = BatchFormer(inner, dropout=0.0)
    assert model.model is inner and model.config["base"] == "gem" and model.config["nhead"] == 4
    assert model.batchformer.linear1.out_features == 32  # dim_feedforward defaults to D
    model.train()
    x = _images()
    out = model.forward_train(x)
    desc, attended = out["descriptor"], out["batch_attended"]
    assert desc.shape == attended.shape == (3, 32)
    torch.testing.assert_close(attended.norm(dim=1), torch.ones(3))
    expected = F.normalize(model.batchformer(desc.unsqueeze(1)).squeeze(1), dim=-1)
    torch.testing.assert_close(attended, expected)
    # the batch is the sequence: another third sample changes the first sample's attended output
    with torch.no_grad():
        changed = model.attend(torch.cat([desc[:2], -desc[2:]]))
    assert not torch.allclose(changed[0], attended[0])
    with pytest.raises(ValueError, match="only apply when the model is built here"):
        BatchFormer(inner, whitening=8)


def test_attend_sets_runs_each_set_as_its_own_sequence() -> None:
    """Many sets at once (the path of the test-time shortlist reranker) equal one set at a time; ``attend`` is one."""
    torch.manual_seed(0)
    model = create_model("batchformer", backbone=BACKBONE, whitening=16).eval()
    sets = F.normalize(torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        together = model.attend_sets(sets)
        alone = torch.stack([model.attend(s) for s in sets])
        by_hand = torch.stack([F.normalize(model.batchformer(s.unsqueeze(1)).squeeze(1), dim=-1) for s in sets])
        changed = sets.clone()
        changed[1, 4] = -changed[1, 4]
        other = model.attend_sets(changed)
    assert together.shape == (3, 5, 16)
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(alone, by_hand)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(3, 5))
    # a member of set 1 changed: set 1's other outputs change, sets 0 and 2 do not
    assert not torch.allclose(other[1, 0], together[1, 0])
    torch.testing.assert_close(other[[0, 2]], together[[0, 2]])


def test_the_runs_loss_is_one_shared_head_on_both_streams_with_labels_repeated() -> None:
    """BatchFormer's objective: the classifier on cat([pre, post]) (2B rows) and the labels twice, one head."""
    torch.manual_seed(0)
    model = create_model("batchformer", backbone=BACKBONE, base="gem", whitening=16, dropout=0.0).train()
    objective = CompositeLoss(
        [LossTerm("cosface")], output_dims=model.output_dims(), num_classes=5, streams=model.descriptor_streams()
    )
    labels = torch.tensor([0, 3, 1])
    out = model.forward_train(_images())
    total, terms = objective(out, labels)
    head = objective.terms["cosface"]
    expected = head(torch.cat([out["descriptor"], out["batch_attended"]]), torch.cat([labels, labels]))
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(terms["cosface"], expected)


def test_gradients_reach_every_parameter_through_both_streams_and_the_wrapped_models_own_terms() -> None:
    torch.manual_seed(0)
    model = create_model("batchformer", backbone=BACKBONE, base="delg", dim=64, local_branch=True).train()
    unzero_norms(model)
    assert [t.name for t in model.loss_terms()] == ["delg_attention", "delg_reconstruction"]
    objective = CompositeLoss(
        merge_terms([LossTerm("arcface")], model.loss_terms()),
        output_dims=model.output_dims(),
        num_classes=5,
        streams=model.descriptor_streams(),
    )
    objective(model.forward_train(_images()), torch.tensor([0, 3, 1]))[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


def test_inspect_adds_batch_attention() -> None:
    model = create_model("batchformer", backbone=BACKBONE, base="delg", dim=64, local_branch=True).eval()
    with torch.no_grad():
        ins = model.inspect(_images())
    assert {k: tuple(v.shape) for k, v in ins.items()} == {
        "features": (3, 512, 1, 1),
        "descriptor": (3, 64),
        "attention": (3, 2, 2),
        "local_features": (3, 128, 2, 2),
        "batch_attention": (3, 3),
    }
    torch.testing.assert_close(ins["batch_attention"].sum(-1), torch.ones(3))


def test_bgr_flag_is_the_wrapped_models() -> None:
    model = create_model("batchformer", backbone=BACKBONE, whitening=16)
    assert model.bgr_weights is False
    model.bgr_weights = True
    assert model.model.bgr_weights is True and model.bgr_weights is True


def test_weights_whole_wrapper_or_wrapped_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("batchformer", backbone=BACKBONE, whitening=16)
    path = tmp_path / "bf.pth"
    torch.save(source.state_dict(), path)
    loaded = create_model("batchformer", backbone=BACKBONE, whitening=16, weights=path)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save(source.model.state_dict(), path)
    inner_only = create_model("batchformer", backbone=BACKBONE, whitening=16, weights=path)
    assert torch.equal(inner_only.model.whiten.weight, source.model.whiten.weight)
    assert inner_only.config["weights"] == str(path)  # recorded once, by the wrapper that loaded them
    built = BatchFormer(create_model("gem", backbone=BACKBONE, whitening=16), weights=path)  # into a given model
    assert torch.equal(built.model.whiten.weight, source.model.whiten.weight)
    with pytest.raises(ValueError, match="Pass either pretrained=True or weights=PATH"):
        create_model("batchformer", backbone=BACKBONE, pretrained=True, weights=path)
    broken = {k: v for k, v in source.state_dict().items() if k != "batchformer.linear1.weight"}
    torch.save(broken, path)
    with pytest.raises(ValueError, match="missing keys: batchformer.linear1.weight"):
        create_model("batchformer", backbone=BACKBONE, whitening=16, weights=path)

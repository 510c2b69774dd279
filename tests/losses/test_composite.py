"""Composite objectives: term specs, weighted sums of unweighted term values, streams, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irlib.losses import CompositeLoss, LossTerm, Stream, create_loss, merge_terms

DIMS = {"descriptor": 8, "other": 8, "attention_pooled": 4, "reconstruction": 4, "reconstruction_target": 4}


def _outputs(batch: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "descriptor": F.normalize(torch.randn(batch, 8, generator=g), dim=-1),
        "other": F.normalize(torch.randn(batch, 8, generator=g), dim=-1),
        "attention_pooled": torch.randn(batch, 4, generator=g),
        "reconstruction": torch.randn(batch, 4, 2, 2, generator=g),
        "reconstruction_target": torch.randn(batch, 4, 2, 2, generator=g),
    }


LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def test_a_spec_reads_name_weight_on_and_kwargs_and_round_trips() -> None:
    term = LossTerm.from_spec({"name": "smoothap", "weight": 0.5, "on": "descriptor", "kwargs": {"tau": 0.05}})
    assert term == LossTerm("smoothap", 0.5, ("descriptor",), {"tau": 0.05})
    assert LossTerm.from_spec(term.to_dict()) == term
    assert LossTerm.from_spec({"name": "arcface"}).to_dict() == {"name": "arcface", "weight": 1.0}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['s'\].*under kwargs"):
        LossTerm.from_spec({"name": "arcface", "s": 30})
    with pytest.raises(ValueError, match="Unknown loss 'smooth_ap'. Available losses: arcface"):
        LossTerm.from_spec({"name": "smooth_ap"})
    with pytest.raises(ValueError, match="weight must be a number >= 0"):
        LossTerm("arcface", weight=-1)
    assert LossTerm.from_spec({"name": "arcface", "weight": "1e-2"}).weight == 0.01  # PyYAML's string for 1e-2
    with pytest.raises(ValueError, match="weight must be a number >= 0"):
        LossTerm.from_spec({"name": "arcface", "weight": "heavy"})
    with pytest.raises(ValueError, match="at least 'name'"):
        LossTerm.from_spec({"weight": 1.0})


def test_total_is_the_weighted_sum_of_unweighted_term_values() -> None:
    torch.manual_seed(0)
    terms = [LossTerm("arcface", 1.0, kwargs={"s": 30.0}), LossTerm("smoothap", 0.5)]
    objective = CompositeLoss(terms, output_dims=DIMS, num_classes=3)
    out = _outputs()
    total, values = objective(out, LABELS)
    arc = objective.terms["arcface"](out["descriptor"], LABELS)
    ap = create_loss("smoothap")(out["descriptor"], LABELS)
    torch.testing.assert_close(values["arcface"], arc)
    torch.testing.assert_close(values["smoothap"], ap)
    torch.testing.assert_close(total, arc + 0.5 * ap)
    assert objective.terms["arcface"].config["s"] == 30.0 and objective.terms["arcface"].weight.shape == (3, 8)
    assert objective.needs_positives == ["smoothap"] and objective.descriptor_head() is objective.terms["arcface"]
    assert objective.config == [t.to_dict() for t in terms]


def test_streams_concatenate_outputs_with_repeated_labels_and_weight_separate_streams() -> None:
    torch.manual_seed(0)
    out = _outputs()
    shared = CompositeLoss(
        [LossTerm("cosface")], output_dims=DIMS, num_classes=3, streams=[Stream(("descriptor", "other"))]
    )
    head = shared.terms["cosface"]
    expected = head(torch.cat([out["descriptor"], out["other"]]), torch.cat([LABELS, LABELS]))
    torch.testing.assert_close(shared(out, LABELS)[0], expected)

    separate = CompositeLoss(
        [LossTerm("cosface")],
        output_dims=DIMS,
        num_classes=3,
        streams=[Stream(("descriptor",), 0.25), Stream(("other",), 1.0)],
    )
    head = separate.terms["cosface"]
    expected = 0.25 * head(out["descriptor"], LABELS) + head(out["other"], LABELS)
    torch.testing.assert_close(separate(out, LABELS)[0], expected)

    # "on" picks the outputs instead of the model's streams
    only = CompositeLoss([LossTerm("smoothap", on=("other",))], output_dims=DIMS, streams=[Stream(("descriptor",))])
    torch.testing.assert_close(only(out, LABELS)[0], create_loss("smoothap")(out["other"], LABELS))


def test_losses_on_other_outputs_read_their_own_inputs() -> None:
    torch.manual_seed(0)
    out = _outputs()
    objective = CompositeLoss(
        [LossTerm("arcface"), LossTerm("delg_attention", 1.0), LossTerm("delg_reconstruction", 10.0)],
        output_dims=DIMS,
        num_classes=3,
    )
    assert objective.terms["delg_attention"].classifier.in_features == 4  # sized by the output it reads
    total, values = objective(out, LABELS)
    torch.testing.assert_close(
        values["delg_reconstruction"], F.mse_loss(out["reconstruction"], out["reconstruction_target"])
    )
    torch.testing.assert_close(total, values["arcface"] + values["delg_attention"] + 10 * values["delg_reconstruction"])
    assert objective.descriptor_head() is objective.terms["arcface"]


def test_a_repeated_loss_gets_one_key_per_output() -> None:
    objective = CompositeLoss(
        [LossTerm("arcface", on=("descriptor",)), LossTerm("arcface", on=("other",))], output_dims=DIMS, num_classes=3
    )
    assert list(objective.terms) == ["arcface@descriptor", "arcface@other"]
    assert objective.terms["arcface@descriptor"] is not objective.terms["arcface@other"]
    with pytest.raises(ValueError, match="'arcface@descriptor' is given twice"):
        CompositeLoss([LossTerm("arcface"), LossTerm("arcface")], output_dims=DIMS, num_classes=3)


def test_errors_name_the_term_and_the_outputs() -> None:
    with pytest.raises(ValueError, match=r"reads training output\(s\) \['local'\] that this model does not produce"):
        CompositeLoss([LossTerm("arcface", on=("local",))], output_dims=DIMS, num_classes=3)
    with pytest.raises(ValueError, match="one head cannot read outputs of sizes"):
        CompositeLoss([LossTerm("arcface", on=("descriptor", "attention_pooled"))], output_dims=DIMS, num_classes=3)
    with pytest.raises(ValueError, match="takes no 'on'"):
        CompositeLoss([LossTerm("delg_reconstruction", on=("reconstruction",))], output_dims=DIMS)
    with pytest.raises(ValueError, match="at least one loss term"):
        CompositeLoss([], output_dims=DIMS)


def test_a_run_re_weights_a_models_term_by_naming_it() -> None:
    model_terms = [LossTerm("delg_attention", 1.0), LossTerm("delg_reconstruction", 10.0)]
    merged = merge_terms([LossTerm("arcface"), LossTerm("delg_reconstruction", 2.0)], model_terms)
    assert [(t.name, t.weight) for t in merged] == [
        ("arcface", 1.0),
        ("delg_reconstruction", 2.0),
        ("delg_attention", 1.0),
    ]


def test_a_loss_module_of_ones_own_is_one_term_on_the_streams() -> None:
    fc = torch.nn.Linear(8, 3)
    own = CompositeLoss.wrap(lambda_loss := _Own(fc), [Stream(("descriptor", "other"))])
    out = _outputs()
    expected = lambda_loss(torch.cat([out["descriptor"], out["other"]]), LABELS.repeat(2))
    torch.testing.assert_close(own(out, LABELS)[0], expected)
    assert list(own.terms) == ["loss"] and own.needs_positives == [] and own.descriptor_head() is None


class _Own(torch.nn.Module):
    def __init__(self, fc: torch.nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(x), y)

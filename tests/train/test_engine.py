"""The training loop: exact resume after preemption, accumulation, NaN stop, lr schedule, weight-decay groups."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from irlib.models.base import RetrievalModel
from irlib.train.config import TrainConfig
from irlib.train.engine import Trainer, lr_at, param_groups


class NoisyImages(torch.utils.data.Dataset):
    """64 random 3x16x16 images in 4 classes; every read adds fresh noise (a stand-in for random augmentation)."""

    num_classes = 4

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 3, 16, 16, generator=g)
        self.y = torch.arange(64) % 4
        self.labels = self.y.numpy()

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(3, 16, 16), int(self.y[i])


class TinyNet(RetrievalModel):
    feat_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return nn.functional.normalize(self.bn(self.conv(x)).relu().mean(dim=(2, 3)), dim=-1)


class Softmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x, y):
        return nn.functional.cross_entropy(10 * self.fc(x), y)


def make(tmp_path, model: nn.Module | None = None, **overrides) -> Trainer:
    """A trainer on ``NoisyImages``: 8 steps per epoch, 2 epochs, micro-batches of 4 (TinyNet unless ``model``)."""
    torch.manual_seed(1)
    settings = dict(
        global_batch=8,
        accumulation=2,
        epochs=2,
        lr=0.1,
        warmup_epochs=0.5,
        warmup_lr=0.01,
        checkpoint_every=5,
        log_every=1,
        out_dir=str(tmp_path),
        channels_last=False,
    )
    return Trainer(TrainConfig(**(settings | overrides)), NoisyImages(), model=model or TinyNet(), loss=Softmax())


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {**t.model.state_dict(), **{f"loss.{k}": v for k, v in t.loss.state_dict().items()}}


def test_a_run_preempted_mid_epoch_and_resumed_ends_bit_identical(tmp_path):
    straight = make(tmp_path / "a")
    straight.fit()
    assert straight.step == 16 == straight.total_steps

    interrupted = make(tmp_path / "b")
    step = interrupted._optimiser_step

    def preempt_at_step_7(group):
        out = step(group)
        if interrupted.step == 6:  # the 7th optimiser step is running
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    interrupted._optimiser_step = preempt_at_step_7
    result = interrupted.fit()
    assert result["preempted"] and interrupted.step == 7  # mid-epoch: 8 steps per epoch
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 7

    assert not (tmp_path / "b" / "model.pth").exists()  # exported only when the run completes
    resumed = make(tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.step == 16
    exported = torch.load(tmp_path / "b" / "model.pth", weights_only=True)["state_dict"]
    assert exported.keys() == resumed.model.state_dict().keys()  # the descriptor model without the loss head
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k


def test_metrics_are_logged_as_jsonl_and_the_config_is_saved(tmp_path):
    t = make(tmp_path, max_steps=3)
    t.fit()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"loss"' in lines[0] and '"lr"' in lines[0]
    assert TrainConfig.from_yaml(tmp_path / "config.yaml").max_steps == 3


def test_non_finite_loss_stops_with_the_step_named_and_keeps_the_last_checkpoint(tmp_path):
    t = make(tmp_path, max_steps=8)
    real = t.loss.terms["loss"].forward
    t.loss.terms["loss"].forward = lambda x, y: real(x, y) * (float("nan") if t.step == 6 else 1.0)
    with pytest.raises(FloatingPointError, match="at step 7"):
        t.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5


def test_lr_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    cfg = TrainConfig(lr=0.01, warmup_lr=1e-4, min_lr=0.0)
    assert lr_at(0, 100, 10, cfg) == pytest.approx(1e-4)
    assert lr_at(5, 100, 10, cfg) == pytest.approx(1e-4 + 0.5 * (0.01 - 1e-4))
    assert lr_at(10, 100, 10, cfg) == pytest.approx(0.01)
    assert lr_at(55, 100, 10, cfg) == pytest.approx(0.005)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(0.0)


def test_one_dimensional_tensors_get_no_weight_decay():
    groups = param_groups([TinyNet(), Softmax()], 1e-4, no_decay_1d=True)
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(8, 3, 3, 3), (4, 8)]
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    assert len(param_groups([TinyNet()], 1e-4, no_decay_1d=False)[1]["params"]) == 0


def test_batch_must_split_evenly(tmp_path):
    with pytest.raises(ValueError, match="multiple of accumulation"):
        TrainConfig(global_batch=10, accumulation=3)


def test_accumulation_keeps_the_trajectory_of_the_full_batch(tmp_path):
    from tests.train.test_distributed import TinyGroupNormNet  # no BatchNorm: batch statistics would differ

    runs = []
    for accumulation in (1, 4):
        torch.manual_seed(1)
        cfg = TrainConfig(
            global_batch=8,
            accumulation=accumulation,
            max_steps=6,
            lr=0.1,
            warmup_epochs=0,
            out_dir=str(tmp_path / str(accumulation)),
            channels_last=False,
            log_every=1,
        )
        t = Trainer(cfg, NoisyImages(), model=TinyGroupNormNet(), loss=Softmax())
        t.fit()
        runs.append(t)
    for k, v in runs[0].model.state_dict().items():
        torch.testing.assert_close(runs[1].model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert runs[1].optimizer.param_groups[0]["lr"] == runs[0].optimizer.param_groups[0]["lr"]  # lr not multiplied


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_and_fp16_uses_a_grad_scaler(tmp_path, amp):
    t = make(tmp_path, max_steps=2, amp=amp)
    assert t.scaler.is_enabled() == (amp == "fp16")
    result = t.fit()
    assert result["step"] == 2 and math.isfinite(result["loss"])


def test_class_balanced_batches_hold_p_classes_of_k_images(tmp_path):
    t = make(tmp_path, max_steps=3, accumulation=1, sampler="class_balanced", classes_per_batch=2, samples_per_class=4)
    seen = []
    forward = t.objective.forward
    t.objective.forward = lambda x, y: (seen.append(y.tolist()), forward(x, y))[1]
    t.fit()
    assert len(seen) == 3
    for labels in seen:
        assert sorted(labels.count(c) for c in set(labels)) == [4, 4]
    with pytest.raises(ValueError, match="must be classes_per_batch x samples_per_class"):
        make(tmp_path, sampler="class_balanced", classes_per_batch=3, samples_per_class=2)


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    make(tmp_path, max_steps=2).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        make(tmp_path, max_steps=2).fit()
    make(tmp_path, max_steps=2).fit(overwrite=True)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # the log started afresh


def test_top1_is_measured_on_unmargined_cosine_logits_and_logged(tmp_path):
    from irlib.losses import create_loss

    torch.manual_seed(1)
    head = create_loss("arcface", embedding_dim=8, num_classes=4, s=30.0, m=0.5)
    cfg = TrainConfig(
        global_batch=8, max_steps=2, warmup_epochs=0, log_every=1, out_dir=str(tmp_path), channels_last=False
    )
    t = Trainer(cfg, NoisyImages(), model=TinyNet(), loss=head)
    with torch.no_grad():
        head.weight.copy_(torch.eye(8)[:4])
    eye = torch.eye(8)
    # sample 0 is closest to class 0 (right), sample 1 to class 2 while labelled 3 (wrong)
    embeddings = torch.stack([eye[0] * 0.9 + eye[1] * 0.3, eye[2]])
    assert t._correct(nn.functional.normalize(embeddings, dim=-1), torch.tensor([0, 3])) == 1
    t.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["top1"] <= 1.0 for r in records)


def test_test_set_monitoring_is_off_by_default_and_labelled_when_on(tmp_path, tiny_revisited):
    from irlib.models import create_model
    from irlib.train.run import revisited_monitor

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1280, 4)

        def forward(self, x, y):
            return nn.functional.cross_entropy(self.fc(x), y)

    assert TrainConfig().monitor_every == 0 and TrainConfig().monitor_dir is None
    cfg = TrainConfig(
        global_batch=8,
        max_steps=2,
        warmup_epochs=0,
        log_every=1,
        out_dir=str(tmp_path),
        monitor_dir=str(tiny_revisited),
        monitor_every=2,
        monitor_image_size=64,
    )
    with pytest.raises(ValueError, match="no monitor callback"):
        Trainer(cfg, NoisyImages(), model=create_model("gem", backbone="efficientnet_lite0"), loss=Head())
    model = create_model("gem", backbone="efficientnet_lite0")
    Trainer(cfg, NoisyImages(), model=model, loss=Head(), monitor=revisited_monitor(cfg)).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    monitored = [r for r in records if "test_set_monitoring" in r]
    assert len(monitored) == 1 and monitored[0]["step"] == 2
    assert set(monitored[0]["test_set_monitoring"]) == {"easy", "medium", "hard"}


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make(tmp_path, max_steps=3, tensorboard=True).fit()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "grad_norm"} <= set(events.Tags()["scalars"])
    logged = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(logged)


def test_gradient_clipping_bounds_the_update(tmp_path):
    t = make(tmp_path, max_steps=1, grad_clip=1e-3, momentum=0.0, lr=1.0, warmup_epochs=0, weight_decay=0.0)
    before = [p.detach().clone() for p in t.optimizer.param_groups[0]["params"] + t.optimizer.param_groups[1]["params"]]
    t.fit()
    after = t.optimizer.param_groups[0]["params"] + t.optimizer.param_groups[1]["params"]
    step = torch.sqrt(sum(((a.detach() - b) ** 2).sum() for a, b in zip(after, before, strict=True)))
    assert step <= 1e-3 * 1.0001  # lr 1 times a gradient clipped to norm 1e-3


def test_non_finite_gradients_stop_the_run_too(tmp_path):
    t = make(tmp_path, max_steps=8)
    t.model.conv.weight.register_hook(lambda g: g * float("nan") if t.step == 6 else g)
    with pytest.raises(FloatingPointError, match="non-finite gradient norm at step 7"):
        t.fit()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5


class TwoHeadNet(TinyNet):
    """TinyNet plus a training-only output ``"aux"`` (B, 8) from a layer that nothing else uses."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(8, 8)

    def forward_train(self, x):
        out = super().forward_train(x)
        return out | {"aux": nn.functional.normalize(self.aux(out["descriptor"]), dim=-1)}

    def output_dims(self):
        return super().output_dims() | {"aux": 8}


def _composite_config(tmp_path, **fields) -> TrainConfig:
    settings = dict(
        global_batch=8, max_steps=2, warmup_epochs=0, log_every=1, out_dir=str(tmp_path), channels_last=False
    )
    return TrainConfig(**(settings | fields))


def test_a_composite_objective_logs_each_term_and_trains_every_output(tmp_path):
    torch.manual_seed(0)
    losses = [{"name": "cosface", "kwargs": {"s": 10.0}}, {"name": "smoothap", "weight": 0.5, "on": "aux"}]
    cfg = _composite_config(
        tmp_path, losses=losses, sampler="class_balanced", classes_per_batch=2, samples_per_class=4, tensorboard=True
    )
    t = Trainer(cfg, NoisyImages(), model=TwoHeadNet())
    before = t.model.aux.weight.detach().clone()
    t.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert set(r["losses"]) == {"cosface", "smoothap"}
        assert r["loss"] == pytest.approx(r["losses"]["cosface"] + 0.5 * r["losses"]["smoothap"], rel=1e-6)
    assert not torch.equal(t.model.aux.weight, before)  # the term on "aux" trained the layer behind it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"losses/cosface", "losses/smoothap"} <= set(events.Tags()["scalars"])


def test_a_parameter_that_no_term_trains_stops_the_run_unless_frozen_on_purpose(tmp_path):
    with pytest.raises(ValueError, match=r"received no gradient .*model\.aux\.weight, model\.aux\.bias.*freeze them"):
        Trainer(_composite_config(tmp_path / "a"), NoisyImages(), model=TwoHeadNet()).fit()
    model = TwoHeadNet()
    model.aux.requires_grad_(False)  # frozen on purpose
    assert Trainer(_composite_config(tmp_path / "b"), NoisyImages(), model=model).fit()["step"] == 2


def test_ranking_terms_need_class_balanced_batches(tmp_path):
    with pytest.raises(ValueError, match=r"\['smoothap'\] compare images of one class .* sampler: class_balanced"):
        Trainer(_composite_config(tmp_path, losses=[{"name": "smoothap"}]), NoisyImages(), model=TinyNet())


def test_a_checkpoint_written_before_composite_objectives_resumes(tmp_path):
    t = Trainer(_composite_config(tmp_path, loss="cosface", max_steps=1), NoisyImages(), model=TinyNet())
    t.fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert set(state["loss"]) == {"terms.cosface.weight"}
    state["loss"] = {"weight": state["loss"].pop("terms.cosface.weight")}  # the old layout: the head's own keys
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = Trainer(_composite_config(tmp_path, loss="cosface", max_steps=2), NoisyImages(), model=TinyNet())
    resumed.fit(resume=True, allow_changes=True)  # a longer run: the change is recorded
    assert resumed.step == 2 and resumed.config_changes == [{"step": 1, "changes": {"max_steps": [1, 2]}}]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step": 1, "config_change": {"max_steps": [1, 2]}} in records


def test_a_second_stage_starts_from_the_first_stages_weights_with_a_fresh_optimiser(tmp_path):
    first = make(tmp_path / "s1", max_steps=3)
    first.fit()
    second = make(tmp_path / "s2", max_steps=2, init_from=str(tmp_path / "s1"))
    started = {}
    step = second._optimiser_step

    def first_step(group):
        started.setdefault("w", {k: v.clone() for k, v in weights(second).items()})
        return step(group)

    second._optimiser_step = first_step
    second.fit()
    for k, v in weights(first).items():
        assert torch.equal(started["w"][k], v), k  # model and loss head as the first stage ended
    assert second.step == 2 and json.loads((tmp_path / "s2" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    with pytest.raises(FileNotFoundError):
        make(tmp_path / "s3", max_steps=1, init_from=str(tmp_path / "missing")).fit()


def test_a_checkpoint_is_loaded_without_running_code(tmp_path):
    from tests.test_io import _Exploit

    make(tmp_path, max_steps=1).fit()
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # what irlib writes loads with weights_only
    marker = tmp_path / "pwned"
    state["rng"]["python"] = _Exploit(marker)
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt: refused: it holds Python objects beyond tensors"):
        make(tmp_path, max_steps=2).fit(resume=True)
    assert not marker.exists()
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint.pt is not a readable training checkpoint"):
        make(tmp_path, max_steps=2).fit(resume=True)

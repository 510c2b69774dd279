"""Composed models: every pooling x batch attention builds, gives unit-norm descriptors that do not depend on the
batch at test time and trains every part; each pooling is its method's own module (same descriptor as the method
with the same weights); configs rebuild the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irlib.models import create_model, method_label, save_checkpoint
from irlib.models.compose import BATCH_ATTENTIONS, POOLINGS, compose_label
from irlib.train.config import TrainConfig
from irlib.train.engine import build_objective, params_without_gradient

CNN, VIT, SIZE, DIM = "resnet18", "vit_tiny_patch16_224", 96, 32
SMALL = {  # small pooling modules so that a step takes a moment on a CPU
    "spca": {"K": 4, "local_dim": 16, "num_heads": 4},
    "senet": {"mid_dim": 16},
}


def _build(pooling: str, batch_attention: str, **kw) -> torch.nn.Module:
    return create_model(
        "compose",
        backbone=VIT if pooling == "cls" else CNN,
        pooling=pooling,
        pooling_kwargs=SMALL.get(pooling, {}),
        whitening=DIM,
        batch_attention=batch_attention,
        **kw,
    )


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_attention", BATCH_ATTENTIONS)
@pytest.mark.parametrize("pooling", POOLINGS.names())
def test_every_combination_gives_batch_independent_unit_descriptors_and_trains_every_part(pooling, batch_attention):
    torch.manual_seed(0)
    model = _build(pooling, batch_attention, bn=pooling == "gem")
    x, labels = _images(8), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    model.eval()
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    assert together.shape == (8, DIM) and model.feat_dim == DIM
    torch.testing.assert_close(together.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(together, alone, atol=2e-5, rtol=0)  # no batch dependence at test time

    cfg = TrainConfig(losses=[{"name": "cosface", "kwargs": {"s": 16.0}}, {"name": "roadmap"}])
    loss = build_objective(cfg, model, num_classes=4)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimiser = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.5)
    model.train()
    for step in range(3):
        optimiser.zero_grad()
        total, _ = loss(model.forward_train(x), labels)
        total.backward()
        if step == 0:
            assert not params_without_gradient({"model": model, "loss": loss})
        optimiser.step()
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, trainable[n])]
    assert not unchanged, f"{pooling}+{batch_attention}: parameters unchanged after 3 steps: {unchanged}"


def _copy_into(target: torch.nn.Module, source: torch.nn.Module, rename: dict[str, str]) -> None:
    """Load ``source``'s tensors into ``target`` with key prefixes renamed (``rename``: source prefix -> target)."""
    state = {}
    for key, value in source.state_dict().items():
        prefix = next((p for p in rename if key.startswith(p)), "")
        state[rename[prefix] + key[len(prefix) :] if prefix else key] = value
    target.load_state_dict(state, strict=True)


def test_each_pooling_is_its_methods_module_same_descriptor_with_the_same_weights() -> None:
    torch.manual_seed(0)
    x = _images(2)
    cases = [
        (
            create_model("dolg", backbone=CNN, reduction_dim=DIM),
            {"pooling": "dolg"},
            {"local.": "pool.local.", "pool.": "pool.pool.", "fc_t.": "pool.fc_t.", "fc.": "whiten."},
        ),
        (
            create_model("senet", backbone=CNN, dim=DIM, mid_dim=16),
            {"pooling": "senet", "pooling_kwargs": {"mid_dim": 16}},
            {"ssm.": "pool.ssm.", "pool.": "pool.pool."},
        ),
        (  # SuperGlobal's training pass: one scale, Regional-GeM, GeM+, L2, FC, L2 (no ReLU+)
            create_model("superglobal", backbone=CNN, dim=DIM, relup=False, relup_s1_always=False, scales=(1.0,)),
            {"pooling": "gem_plus", "normalize_pooled": True},
            None,
        ),
    ]
    for method, parts, rename in cases:
        composed = create_model("compose", backbone=CNN, whitening=DIM, **parts).eval()
        if rename is None:  # CVNet's GeM p is frozen and unused under GeM+; GeM+ has no parameter
            state = {k: v for k, v in method.state_dict().items() if not k.startswith("pool.")}
            composed.load_state_dict(state, strict=True)
        else:
            _copy_into(composed, method, rename)
        method.eval()
        with torch.no_grad():
            torch.testing.assert_close(composed(x), method(x), atol=1e-5, rtol=1e-5)


def test_spca_pooling_is_spcas_context_and_fuser() -> None:
    torch.manual_seed(0)
    x = _images(2)
    spca = create_model("spca", backbone=CNN, outputdim=DIM, **SMALL["spca"]).eval()
    composed = create_model("compose", backbone=CNN, whitening=DIM, pooling="spca", pooling_kwargs=SMALL["spca"])
    state = {}
    for key, value in spca.state_dict().items():
        if key.startswith("pos_branch."):
            key = "pool.context." + key[len("pos_branch.") :]
        elif key.startswith("fuser."):
            key = "pool." + key
        elif key == "whiten.weight":  # SpCa's 1x1 conv on the pooled vector is a Linear
            value = value.flatten(1)
        state[key] = value
    composed.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(composed.eval()(x), spca(x), atol=1e-5, rtol=1e-5)
        maps = composed.inspect(x)
    assert maps["token_assignments"].shape[:2] == (2, 4) and maps["pooled"].shape == (2, 512)


def test_the_config_rebuilds_the_model_and_a_saved_run_reloads(tmp_path) -> None:
    torch.manual_seed(0)
    model = _build("alpha", "batchformer", bn=True)
    config = dict(model.config)
    assert config["method"] == "compose" and config["batch_attention"] == "batchformer"
    assert compose_label(config) == method_label(config) == "compose[alpha+batchformer/w32/bn]"
    assert method_label(create_model("gem", backbone=CNN).config) == "gem"
    path = tmp_path / "model.pth"
    save_checkpoint(model, path)
    kwargs = {k: v for k, v in config.items() if k not in ("method", "weights")}
    again = create_model("compose", weights=path, **kwargs)
    assert again.config == config | {"weights": str(path)}
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))
    assert set(model.no_weight_decay()) == set()
    spca = _build("spca", "batch_transformer")
    names = dict(spca.named_parameters())
    assert spca.no_weight_decay() == {"model.pool.context.log_pi", "model.pool.context.log_cov"} <= set(names)


def test_wrong_parts_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="pooling.*gem_plus"):
        create_model("compose", backbone=CNN, pooling="rmac")
    with pytest.raises(ValueError, match="class token"):
        create_model("compose", backbone=CNN, pooling="cls")
    with pytest.raises(ValueError, match="batch_attention must be one of"):
        create_model("compose", backbone=CNN, batch_attention="batchnorm")
    with pytest.raises(ValueError, match="only with a batch_attention"):
        create_model("compose", backbone=CNN, batch_attention_kwargs={"nhead": 2})
    with pytest.raises(ValueError, match="either pretrained=True or weights=PATH"):
        create_model("compose", backbone=CNN, pretrained=True, weights="model.pth")
    with pytest.raises(TypeError, match="K"):
        create_model("compose", backbone=CNN, pooling="gem", pooling_kwargs={"K": 4})


def test_cls_and_mean_poolings_read_the_vits_tokens() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for pooling in ("cls", "mean"):
        composed = create_model("compose", backbone=VIT, pooling=pooling).eval()
        reference = create_model("gem", backbone=VIT, pooling=pooling).eval()
        reference.load_state_dict(composed.state_dict() | {"pool.p": reference.pool.p})
        with torch.no_grad():
            torch.testing.assert_close(composed(x), reference(x))
            assert F.cosine_similarity(composed(x), composed(x.flip(-1))).min() < 1

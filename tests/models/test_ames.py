"""AMES reranker model: the block computation equals AMES's masked decoder, the masks keep images and padding apart,
binary codes of about 1 KB per database image, the straight-through binariser, reranker files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from irlib.models.ames import (
    AMES,
    AMESConfig,
    BinaryLocals,
    attention_pooled,
    itq,
    load_reranker,
    pack_codes,
    padding_mask,
    rerank_score,
    save_reranker,
    unpack_codes,
)

SMALL = AMESConfig(
    in_dim=160, bits=128, model_dim=32, heads=2, layers=3, ffn=48, detector_hidden=16, n_query=12, n_db=8
)


def codes(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(*shape, generator=g) > 0.5, 1.0, -1.0)


def masked_decoder(model: AMES, qc, q_pad, xc, x_pad) -> torch.Tensor:
    """AMES ``matcher.py`` as written: one sequence [m; q; x], its sa_mask / ca_mask and key padding, every token
    through every layer (here with the module's own weights)."""
    mt = model.matcher
    q, x = model.project(qc), model.project(xc)
    b, nq, nx = len(q), q.shape[1], x.shape[1]
    seq = torch.cat([mt.token.expand(b, -1, -1), q, x], 1)
    group = torch.tensor([0] + [1] * nq + [2] * nx)
    same, token = group[:, None] == group[None, :], (group[:, None] == 0) | (group[None, :] == 0)
    keep = torch.cat([torch.ones(b, 1, dtype=torch.bool), ~q_pad, ~x_pad], 1)[:, None, None, :]
    self_mask, cross_mask = (same | token)[None, None] & keep, (~same | token)[None, None] & keep

    def attention(attn, t, mask):
        qq, k, v = attn.qkv(t)
        return attn.out_proj(F.scaled_dot_product_attention(qq, k, v, attn_mask=mask).transpose(1, 2).flatten(2))

    for layer in mt.layers:
        seq = layer.norm1(seq + attention(layer.self_attn, seq, self_mask))
        seq = layer.norm2(seq + attention(layer.cross_attn, seq, cross_mask))
        seq = layer.feed_forward(seq)
    return mt.classifier(seq[:, 0]).squeeze(-1)


@pytest.fixture(scope="module")
def model() -> AMES:
    torch.manual_seed(0)
    m = AMES(SMALL).eval()
    with torch.no_grad():  # away from the init's near-zero weights, so that every block matters
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_block_computation_equals_the_masked_decoder(layers):
    torch.manual_seed(layers)
    m = AMES(dataclasses.replace(SMALL, layers=layers)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    qc, xc = codes(5, 12, 128, seed=1), codes(5, 8, 128, seed=2)
    q_pad = padding_mask(torch.tensor([12, 3, 7, 12, 1]), 12)
    x_pad = padding_mask(torch.tensor([8, 8, 2, 5, 0]), 8)  # an image without descriptors too
    with torch.no_grad():
        ours = m(qc, q_pad, xc, x_pad)
        official = masked_decoder(m, qc, q_pad, xc, x_pad)
    assert ours.shape == (5,)
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=1e-5)


def test_a_pair_never_sees_another_pair(model):
    """The batch holds independent pairs: a database image's locals change its own pair's logit only."""
    qc, xc = codes(4, 12, 128, seed=3), codes(4, 8, 128, seed=4)
    q_pad, x_pad = padding_mask(torch.tensor([12] * 4), 12), padding_mask(torch.tensor([8] * 4), 8)
    changed = xc.clone()
    changed[2] = codes(8, 128, seed=5)
    with torch.no_grad():
        before, after = model(qc, q_pad, xc, x_pad), model(qc, q_pad, changed, x_pad)
    assert torch.equal(before[[0, 1, 3]], after[[0, 1, 3]])
    assert not torch.isclose(before[2], after[2])


def test_padding_is_invisible_to_both_sides(model):
    qc, xc = codes(2, 12, 128, seed=6), codes(2, 8, 128, seed=7)
    q_pad, x_pad = padding_mask(torch.tensor([5, 9]), 12), padding_mask(torch.tensor([3, 8]), 8)
    garbage_q, garbage_x = qc.clone(), xc.clone()
    garbage_q[q_pad] = codes(int(q_pad.sum()), 128, seed=8)
    garbage_x[x_pad] = codes(int(x_pad.sum()), 128, seed=9)
    valid_q = qc.clone()
    valid_q[0, 0] = -valid_q[0, 0]
    with torch.no_grad():
        base = model(qc, q_pad, xc, x_pad)
        torch.testing.assert_close(model(garbage_q, q_pad, garbage_x, x_pad), base, atol=1e-6, rtol=0)
        assert not torch.isclose(model(valid_q, q_pad, xc, x_pad)[0], base[0])


def test_encoded_states_are_reused_across_pairs(model):
    """Scoring one query against many database images from states encoded once gives the per-pair logits."""
    qc, xc = codes(1, 12, 128, seed=10), codes(6, 8, 128, seed=11)
    q_pad, x_pad = padding_mask(torch.tensor([10]), 12), padding_mask(torch.tensor([8, 4, 6, 8, 1, 7]), 8)
    with torch.no_grad():
        states = model.encode(qc, q_pad), model.encode(xc, x_pad)
        order = torch.tensor([4, 0, 0, 5])
        logits = model.match(states[0].take(torch.zeros(4, dtype=torch.long)), states[1].take(order))
        direct = model(qc.expand(4, -1, -1), q_pad.expand(4, -1), xc[order], x_pad[order])
    torch.testing.assert_close(logits, direct, atol=1e-6, rtol=0)


def test_detector_selection_and_binary_codes(model):
    positions = torch.randn(40, 160)
    scores = model.detect(positions)
    assert scores.shape == (40,) and (scores >= 0).all()
    selected = model.select(positions, scores, 12)
    assert selected.shape == (12, 128) and set(selected.unique().tolist()) == {-1.0, 1.0}
    best = torch.topk(scores, 12).indices
    torch.testing.assert_close(selected, model.binariser(positions[best]))
    assert model.select(positions[:5], scores[:5], 12).shape == (5, 128)  # fewer positions than asked


def test_database_costs_at_most_1_1_kb_per_image():
    assert AMESConfig(in_dim=1280).bytes_per_db_image == 32 * 16 + 2 == 514  # the defaults
    config = AMESConfig(in_dim=1280, n_db=64)  # the largest count under 1.1 KB, the paper's budget
    assert config.bytes_per_db_image == 64 * 16 + 2 == 1026 <= 1.1 * 1024
    c = codes(3, 64, 128, seed=12)
    locals_ = pack_codes(c, torch.tensor([64, 10, 0]))
    assert locals_.bytes_per_image == config.bytes_per_db_image
    assert locals_.codes.nbytes / 3 + locals_.counts.itemsize == locals_.bytes_per_image
    unpacked, pad = locals_.tensors()
    assert torch.equal(unpacked[0], c[0]) and torch.equal(unpacked[1, :10], c[1, :10])
    assert pad.sum(1).tolist() == [0, 54, 64]
    with pytest.raises(ValueError, match="multiple of 8"):
        AMESConfig(in_dim=1280, bits=100)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.sampled_from([8, 64, 128]), st.data())
def test_packing_round_trips_valid_rows(n, width, bits, data):
    counts = torch.tensor(data.draw(st.lists(st.integers(0, width), min_size=n, max_size=n)))
    c = codes(n, width, bits, seed=data.draw(st.integers(0, 100)))
    locals_ = pack_codes(c, counts)
    assert locals_.codes.shape == (n, width, bits // 8) and locals_.codes.dtype == np.uint8
    valid = ~padding_mask(counts, width)
    assert torch.equal(unpack_codes(locals_.codes)[valid], c[valid])
    assert (locals_.codes[~valid.numpy()] == 0).all()
    taken = locals_.take(np.arange(n)[::-1])
    assert np.array_equal(taken.counts, locals_.counts[::-1])


def test_binariser_is_sign_forward_and_tanh_backward():
    model = AMES(AMESConfig(in_dim=128, tau=0.5))
    b = model.binariser
    x = torch.randn(6, 128, requires_grad=True)
    out = b(x)
    z = (F.normalize(x, dim=-1) - b.mu) @ b.weight
    assert torch.equal(out, torch.where(z >= 0, 1.0, -1.0))
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.tanh(((F.normalize(x2, dim=-1) - b.mu) @ b.weight) / 0.5).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_itq_gives_an_orthonormal_projection_and_balanced_bits():
    x = torch.randn(1000, 160) @ torch.randn(160, 160) + 3.0  # correlated, off-centre
    mean, w = itq(x, 64, iters=10)
    torch.testing.assert_close(w.T @ w, torch.eye(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(mean, x.mean(0), atol=1e-4, rtol=1e-4)
    balance = ((x - mean) @ w > 0).float().mean(0)
    assert balance.min() > 0.3 and balance.max() < 0.7


def test_attention_pooling_and_score_formula_on_hand_made_numbers():
    positions = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 5.0]])
    pooled = attention_pooled(positions, torch.tensor([1.0, 0.0, 3.0]))
    torch.testing.assert_close(pooled, F.normalize(torch.tensor([1.0, 3.0]), dim=0))
    logits = torch.tensor([0.0, 2.0, -1.0])
    score = rerank_score(torch.tensor([0.5, 0.2, 0.9]), logits, lam=0.25, gamma=0.5)
    expected = torch.tensor(
        [0.25 * 0.5 + 0.75 * 0.5, 0.25 * 0.2 + 0.75 / (1 + np.exp(-1.0)), 0.25 * 0.9 + 0.75 / (1 + np.exp(0.5))]
    )
    torch.testing.assert_close(score, expected.float())


def test_reranker_files_round_trip_and_bad_files_say_what_is_wrong(tmp_path, model):
    path = tmp_path / "reranker.pt"
    save_reranker(model, path, {"lam": 0.4, "gamma": 0.2})
    loaded, meta = load_reranker(path)
    assert meta == {"lam": 0.4, "gamma": 0.2} and loaded.config == SMALL and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pt is not a readable AMES reranker file"):
        load_reranker(tmp_path / "text.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not an AMES reranker file: expected a mapping with format"):
        load_reranker(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    torch.save(payload | {"config": payload["config"] | {"n_db": 0}}, tmp_path / "config.pt")
    with pytest.raises(ValueError, match=r"config\.pt: field 'config' is not a valid AMESConfig: .*n_db"):
        load_reranker(tmp_path / "config.pt")
    torch.save(payload | {"config": payload["config"] | {"ffn": 64}}, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match=r"shapes\.pt.*shape mismatches"):
        load_reranker(tmp_path / "shapes.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_reranker(tmp_path / "missing.pt")


def test_binary_locals_refuse_inconsistent_arrays():
    with pytest.raises(ValueError, match="uint8"):
        BinaryLocals(np.zeros((2, 4, 16), np.int64), np.zeros(2, np.uint16))
    with pytest.raises(ValueError, match="counts"):
        BinaryLocals(np.zeros((2, 4, 16), np.uint8), np.array([5, 1], np.uint16))


def test_matching_initialisation_attends_to_copies():
    """After :meth:`AMES.init_for_matching`, a query token's first cross-attention puts its largest weight on the
    database token that is a noisy copy of it."""
    model = AMES(SMALL)
    model.init_for_matching(scale=1.0)
    w = model.project[0].weight
    torch.testing.assert_close(w @ w.T, torch.eye(32) * 128 / 32, atol=1e-4, rtol=0)
    q = codes(1, 12, 128, seed=13)
    flips = torch.where(torch.rand(1, 12, 128, generator=torch.Generator().manual_seed(0)) < 0.15, -1.0, 1.0)
    x = torch.cat([codes(1, 4, 128, seed=14), (q * flips)[:, :4]], 1)  # db tokens 4..7 copy query tokens 0..3
    attn = model.matcher.layers[0].cross_attn
    with torch.no_grad():
        qq, _, _ = attn.qkv(model.project(q))
        _, k, _ = attn.qkv(model.project(x))
        best = (qq @ k.transpose(-1, -2)).sum(1).argmax(-1)[0]  # summed over heads
    assert best[:4].tolist() == [4, 5, 6, 7]

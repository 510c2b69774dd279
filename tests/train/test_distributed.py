"""DDP on CPU (gloo, 2 processes): the same loss trajectory and weights as 1 process with the same global batch."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from irlib.models.base import RetrievalModel
from irlib.train.engine import Trainer
from tests.train.test_engine import make


class TinyGroupNormNet(RetrievalModel):
    """No BatchNorm: SyncBatchNorm needs GPU tensors, so on CPU batch statistics would differ per process."""

    feat_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x):
        return nn.functional.normalize(self.norm(self.conv(x)).relu().mean(dim=(2, 3)), dim=-1)


def run(out_dir: str) -> Trainer:
    torch.manual_seed(1)
    trainer = make(out_dir, model=TinyGroupNormNet(), checkpoint_every=100)
    trainer.fit()
    return trainer


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        run(out_dir)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(tmp_path):
    single = run(str(tmp_path / "single"))
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    ddp_state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert ddp_state["step"] == single.step == 16
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][k], v, rtol=1e-4, atol=1e-5)
    losses = [
        [json.loads(line)["loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("single", "ddp")
    ]
    assert len(losses[0]) == len(losses[1]) == 16
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-5)

"""The SLURM example of ``docs/`` stays runnable: its training YAML is a valid config of the composed method, and its
evaluation rebuilds exactly the composition that training saves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from irlib.train.config import TrainConfig

SBATCH = Path(__file__).resolve().parents[1] / "docs" / "slurm" / "new_method.sbatch"


def test_the_slurm_example_trains_compose_rank_and_evaluates_the_same_composition(tmp_path):
    text = SBATCH.read_text()
    block = re.search(r"<<YAML\n(.*?)\nYAML\n", text, re.S).group(1)
    block = block.replace("$DATA", "/data").replace("$EXCLUDE", "/data/x.txt").replace("$RUN", "runs/r")
    (tmp_path / "run.yaml").write_text(block)
    cfg = TrainConfig.from_yaml(tmp_path / "run.yaml")
    assert (cfg.method, cfg.backbone, cfg.amp, cfg.sampler) == ("compose", "resnet101", "bf16", "class_balanced")
    kwargs = yaml.safe_load(shlex.split(re.search(r"^kwargs=(.*)$", text, re.M).group(1))[0])
    assert kwargs == cfg.model_kwargs
    assert "--backbone resnet101" in text and "exit 0" in text and "-eq 75" in text  # preempted: requeue, resume

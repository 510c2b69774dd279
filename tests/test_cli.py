"""``python -m irlib``: eval writes metrics.json in the documented format, refuses to overwrite, names bad input."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

import pytest
import torch

from irlib.cli import main
from irlib.io import sha256_file


def _eval(args: list[str]) -> int:
    return main(["eval", "--backbone", "efficientnet_lite0", "--image-size", "64", "--scales", "1", *args])


def test_eval_writes_metrics_in_percent_with_settings(tiny_revisited, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out), "--crop-mode", "trunc"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"dataset", "method", "backbone", "settings", "easy", "medium", "hard"} <= metrics.keys()
    assert (metrics["dataset"], metrics["method"], metrics["backbone"]) == ("tiny", "gem", "efficientnet_lite0")
    for p in ("easy", "medium", "hard"):
        assert 0 <= metrics[p]["map"] <= 100 and set(metrics[p]["mp@k"]) == {"1", "5", "10"}
    s = metrics["settings"]
    assert (s["image_size"], s["scales"], s["crop_mode"], s["crop_queries"]) == (64, [1.0], "trunc", True)
    assert s["model"]["pretrained"] is False and s["n_queries"] == 2 and s["n_db"] == 6
    assert s["gnd_sha256"] == sha256_file(tiny_revisited / "gnd_tiny.pkl") and s["weights_sha256"] is None
    assert (out / "per_query.csv").read_text().splitlines()[0] == "query,easy,medium,hard"
    assert "medium" in capsys.readouterr().out


def test_eval_refuses_an_existing_output_unless_forced(tiny_revisited, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err and not (out / "metrics.json").exists()
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out), "--force"]) == 0
    assert (out / "metrics.json").exists() and (out / "keep.txt").exists()


def test_data_root_and_dataset_name(tiny_revisited, tmp_path):
    out = tmp_path / "run"
    assert _eval(["--data-root", str(tiny_revisited.parent), "--dataset", "tiny", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["dataset"] == "tiny"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nomethod"], "Available methods: "),
        (["--backbone", "resnet5O"], "Did you mean"),
    ],
)
def test_unknown_method_or_backbone_lists_the_choices(tiny_revisited, tmp_path, capsys, args, message):
    assert main(["eval", "--dataset-dir", str(tiny_revisited), "--out", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


def test_bad_dataset_folder_is_named(tmp_path, capsys):
    assert _eval(["--dataset-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing does not exist" in capsys.readouterr().err


def test_summarize_prints_runs_side_by_side(tiny_revisited, tmp_path, capsys):
    for name in ("a", "b"):
        _eval(["--dataset-dir", str(tiny_revisited), "--out", str(tmp_path / "runs" / name)])
    capsys.readouterr()
    assert main(["summarize", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(str(tmp_path / "runs" / "a")) for line in lines)
    assert any(line.startswith(str(tmp_path / "runs" / "b")) for line in lines)


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "irlib", "--help"], capture_output=True, text=True, check=True)
    assert "make-demo-data" in done.stdout and "eval" in done.stdout


def test_eval_with_local_weights_records_their_checksum(tiny_revisited, tmp_path):
    import torch

    from irlib.models import create_model

    path = tmp_path / "weights.pth"
    torch.save(create_model("gem", backbone="efficientnet_lite0").state_dict(), path)
    out = tmp_path / "run"
    assert _eval(["--dataset-dir", str(tiny_revisited), "--weights", str(path), "--out", str(out)]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["weights_sha256"] == sha256_file(path) and settings["model"]["weights"] == str(path)


def test_eval_of_a_composed_model_takes_its_arguments_as_yaml(tiny_revisited, tmp_path, capsys):
    from irlib.eval.extract import model_fingerprint
    from irlib.models import create_model, save_checkpoint

    torch.manual_seed(0)
    parts = {"pooling": "gem_learned", "batch_attention": "batchformer", "whitening": 16}
    save_checkpoint(create_model("compose", backbone="efficientnet_lite0", **parts), tmp_path / "model.pth")
    out = tmp_path / "run"
    kwargs = "{pooling: gem_learned, batch_attention: batchformer, whitening: 16}"
    args = ["--method", "compose", "--model-kwargs", kwargs, "--weights", str(tmp_path / "model.pth")]
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out), *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "compose[gem_learned+batchformer/w16]"
    assert metrics["settings"]["model"]["batch_attention"] == "batchformer"
    saved = create_model("compose", backbone="efficientnet_lite0", weights=tmp_path / "model.pth", **parts)
    assert metrics["settings"]["state_dict_sha256"] == model_fingerprint(saved)  # the saved weights were evaluated
    with pytest.raises(SystemExit):
        _eval(["--dataset-dir", str(tiny_revisited), "--out", str(tmp_path / "o"), "--model-kwargs", "[1, 2]"])
    assert "expected a YAML mapping such as '{pooling: spca}', got '[1, 2]'" in capsys.readouterr().err


def test_preset_sets_the_official_pipeline_and_flags_override_it(tiny_revisited, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--dataset-dir", str(tiny_revisited), "--backbone", "efficientnet_lite0", "--out", str(out)]
    assert main([*args, "--preset", "dolg", "--scales", "1", "0.5"]) == 0
    s = json.loads((out / "metrics.json").read_text())["settings"]
    assert (s["preset"], s["crop_mode"], s["scale_resize"], s["image_size"]) == ("dolg", "trunc", "cv2-linear", None)
    assert s["scales"] == [1.0, 0.5]


def test_train_command_runs_a_yaml_config_on_gldv2_layout_data(tmp_path, capsys):
    from irlib.data.synthetic import DemoConfig, make_demo_data

    data = make_demo_data(
        tmp_path / "demo", DemoConfig(n_test_landmarks=1, n_train_landmarks=3, n_overlap_landmarks=0), progress=False
    )
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(
        f"recipe: spca\nmethod: gem\nbackbone: efficientnet_lite0\ndata_dir: {data}\nout_dir: {out}\n"
        "image_size: 64\nglobal_batch: 4\nmax_steps: 2\nwarmup_epochs: 0\nchannels_last: false\n"
    )
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--set", "lr=0.001"]) == 0
    assert {"checkpoint.pt", "model.pth", "metrics.jsonl", "config.yaml", "labels.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "labels.json").read_text())["num_classes"] == 3
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["step"] == 2
    labels = (out / "labels.json").read_bytes()
    (tmp_path / "other.yaml").write_text(
        (tmp_path / "run.yaml").read_text().replace("recipe: spca\n", "recipe: dolg\n")
    )
    assert main(["train", "--config", str(tmp_path / "other.yaml")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "labels.json").read_bytes() == labels  # a refused run writes nothing
    run = ["train", "--config", str(tmp_path / "run.yaml")]
    assert main([*run, "--resume", "--set", "lr=0.001", "max_steps=3"]) == 2  # a longer schedule alters training
    err = capsys.readouterr().err
    assert "max_steps: 2 -> 3" in err and "--allow-config-change" in err and "from step 2" in err
    assert main([*run, "--resume", "--set", "lr=1e-3", "max_steps=3", "--allow-config-change"]) == 0  # 1e-3: a number
    record = json.loads((out / "run.json").read_text())
    assert record["params"]["config_changes"] == [{"step": 2, "changes": {"max_steps": [2, 3]}}]
    assert main([*run, "--set", "max_steps=ten"]) == 2
    assert "--set: field max_steps: expected int or null, got 'ten'" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("recipe: spca\nlog_every: 0\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml: field log_every: must be >= 1, got 0" in capsys.readouterr().err


def test_torchrun_two_cpu_processes_train_from_the_command_line(tmp_path):
    import os
    import shutil

    from irlib.data.synthetic import DemoConfig, make_demo_data

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun is installed with torch"
    data = make_demo_data(
        tmp_path / "demo", DemoConfig(n_test_landmarks=1, n_train_landmarks=3, n_overlap_landmarks=0), progress=False
    )
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(
        f"method: gem\nbackbone: efficientnet_lite0\nloss: cosface\ndata_dir: {data}\nout_dir: {out}\n"
        "image_size: 64\nglobal_batch: 8\nmax_steps: 2\nwarmup_epochs: 0\nlog_every: 1\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--nproc_per_node=2", "--master_port=29517", "-m", "irlib", "train", "--config"]
    done = subprocess.run([*cmd, str(tmp_path / "run.yaml")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch_load_step(out / "checkpoint.pt") == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # rank 0 logs once per step
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)


def torch_load_step(path) -> int:
    import torch

    return torch.load(path, weights_only=False)["step"]


def test_eval_with_distractors_records_the_larger_database(tiny_revisited, tmp_path):
    from PIL import Image

    root = tmp_path / "r1m"
    (root / "jpg" / "0").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (50, 40), (60 * i, 10, 10)).save(root / "jpg" / "0" / f"d{i}.jpg")
    (root / "revisitop1m.txt").write_text("0/d0.jpg\n0/d1.jpg\n0/d2.jpg\n0/d3.jpg\n")
    out = tmp_path / "run"
    args = ["--dataset-dir", str(tiny_revisited), "--distractors", str(root), "--out", str(out)]
    assert _eval(args) == 2  # d3.jpg is missing
    assert _eval([*args, "--skip-missing-distractors"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "tiny+r1m" and metrics["settings"]["n_db"] == 6 + 3


def test_eval_with_reranking_and_distractor_features(tiny_revisited, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "r1m"
    (root / "jpg" / "0").mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (50, 40), (50 * i, 10, 10)).save(root / "jpg" / "0" / f"d{i}.jpg")
    (root / "revisitop1m.txt").write_text("".join(f"0/d{i}.jpg\n" for i in range(5)))
    import torch

    from irlib.models import create_model

    weights = tmp_path / "weights.pth"
    torch.save(create_model("gem", backbone="efficientnet_lite0").state_dict(), weights)
    model = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--scales", "1", "--weights", str(weights)]
    feats = tmp_path / "feats"
    assert main(["extract", "--distractors", str(root), "--out", str(feats), "--chunk-size", "2", *model]) == 0
    out = tmp_path / "run"
    args = ["--dataset-dir", str(tiny_revisited), "--distractor-features", str(feats), "--out", str(out)]
    args += ["--weights", str(weights)]
    assert _eval([*args, "--rerank", "superglobal", "--rerank-param", "M=8", "K=2", "beta=0.3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "tiny+r1m" and metrics["settings"]["n_db"] == 6 + 5
    assert metrics["settings"]["rerank"] == {
        "method": "superglobal",
        "params": {"M": 8, "K": 2, "beta": 0.3, "stable": True},
    }
    assert "gem/efficientnet_lite0 + superglobal" in capsys.readouterr().out
    assert _eval([*args, "--force", "--rerank", "superglobal", "--rerank-param", "M"]) == 2
    assert "--rerank-param expects NAME=VALUE, got 'M'" in capsys.readouterr().err
    assert _eval([*args, "--force", "--rerank", "alpha_qe"]) == 2
    assert "alpha_qe needs parameter(s) k, alpha" in capsys.readouterr().err


def test_eval_shortlist_attention_needs_a_batchformer_and_is_recorded_batch_dependent(tiny_revisited, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dataset-dir", str(tiny_revisited), "--out", str(out), "--rerank", "shortlist_attention"]
    assert _eval([*args, "--rerank-param", "M=4"]) == 2  # gem has no batch attention
    assert "model 'gem' has none: it has no batch attention" in capsys.readouterr().err and not out.exists()
    assert _eval([*args, "--rerank-param", "M=4", "--method", "batchformer"]) == 0
    rerank = json.loads((out / "metrics.json").read_text())["settings"]["rerank"]
    assert rerank["params"] == {"M": 4, "lam": 0.0} and rerank["batch_dependent"] is True
    assert rerank["batch_attention"] == {"model": "batchformer", "module": "BatchFormer"}


def test_eval_dba_takes_an_integer_k_and_a_float_alpha(tiny_revisited, tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out), "--dba", "2", "3"]) == 0
    dba = json.loads((out / "metrics.json").read_text())["settings"]["dba"]
    assert dba == {"k": 2, "alpha": 3.0} and isinstance(dba["k"], int)
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out), "--force", "--dba", "2.7", "3"]) == 2
    assert "--dba expects K ALPHA: an integer K and a number ALPHA, got '2.7' '3'" in capsys.readouterr().err


def test_eval_search_options_faiss_flat_equals_exact_and_ivfpq_reports_recall(tiny_revisited, tmp_path, capsys):
    base = ["--dataset-dir", str(tiny_revisited), "--pretrained"]  # the same weights in every run
    assert _eval([*base, "--out", str(tmp_path / "exact")]) == 0
    assert _eval([*base, "--out", str(tmp_path / "flat"), "--search", "faiss-flat", "--shortlist", "100"]) == 0
    exact, flat = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("exact", "flat"))
    assert flat["settings"]["search"] == {"method": "faiss-flat", "params": {"shortlist": 100}}
    assert all(flat[p] == exact[p] for p in ("easy", "medium", "hard"))
    capsys.readouterr()
    ivf = ["--search", "ivfpq", "--nlist", "2", "--nprobe", "2", "--pq-m", "8", "--pq-nbits", "2", "--train-size", "6"]
    assert _eval([*base, "--out", str(tmp_path / "ivf"), *ivf]) == 0
    search = json.loads((tmp_path / "ivf" / "metrics.json").read_text())["settings"]["search"]
    assert search["params"] == {
        "shortlist": 1000,
        "nprobe": 2,
        "nlist": 2,
        "m": 8,
        "nbits": 2,
        "train_size": 6,
        "seed": 0,
    }
    assert search["recall@100"]["k"] == 6 and search["recall@100"]["ranking"] == 1.0  # every list scanned
    assert "ivfpq recall@6 against exact search: 1.0000" in capsys.readouterr().out
    run = json.loads((tmp_path / "ivf" / "run.json").read_text())
    assert run["params"]["search"] == search
    assert _eval([*base, "--out", str(tmp_path / "bad"), "--nprobe", "4"]) == 2
    assert "search 'exact' takes no parameters; unknown parameter(s) nprobe" in capsys.readouterr().err


def test_a_failed_eval_leaves_no_empty_folder_and_summarize_names_a_damaged_file(tiny_revisited, tmp_path, capsys):
    (tiny_revisited / "jpg" / "db_3.jpg").unlink()
    out = tmp_path / "run"
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(out)]) == 2
    assert "db_3.jpg" in capsys.readouterr().err and not out.exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text('{"dataset": "tiny", "easy": {')  # cut while written
    assert main(["summarize", str(tmp_path / "old")]) == 2
    assert "old/metrics.json is not a readable metrics.json" in capsys.readouterr().err


def test_a_preempted_training_exits_with_its_own_status_and_says_so(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from irlib.data.synthetic import DemoConfig, make_demo_data
    from irlib.train.engine import Trainer

    data = make_demo_data(
        tmp_path / "demo", DemoConfig(n_test_landmarks=1, n_train_landmarks=3, n_overlap_landmarks=0), progress=False
    )
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(
        f"method: gem\nbackbone: efficientnet_lite0\npretrained: false\nloss: cosface\ndata_dir: {data}\n"
        f"out_dir: {out}\nimage_size: 32\nglobal_batch: 4\nmax_steps: 3\nwarmup_epochs: 0\nchannels_last: false\n"
    )
    step = Trainer._optimiser_step

    def preempt_after_the_first_step(self, group):
        result = step(self, group)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "_optimiser_step", preempt_after_the_first_step)
    (out).mkdir()
    (out / ".checkpoint.pt.abc.tmp").write_bytes(b"left by a killed run")
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 75
    assert "preempted at step 1" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "preempted"
    assert not (out / ".checkpoint.pt.abc.tmp").exists()  # stale temporaries removed on start
    # a killed run may have logged steps after its last checkpoint: the resumed log holds each step once
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "loss": 1.0}) + "\n")
    monkeypatch.setattr(Trainer, "_optimiser_step", step)
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--resume", "--set", "log_every=1"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 3
    assert json.loads((out / "run.json").read_text())["status"] == "done"


class _Payload:
    """Unpickling this touches ``path`` (a stand-in for ``os.system``)."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty or truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:30]), "truncated"),
        (lambda p: p.write_text("imlist: [a, b]\n"), "not a pickle, or damaged"),
        (lambda p: p.write_bytes(pickle.dumps(_Payload(p.parent / "ran"))), "refused"),
    ],
    ids=["empty", "truncated", "text", "crafted"],
)
def test_a_bad_ground_truth_file_is_one_line_naming_it(tiny_revisited, tmp_path, capsys, damage, message):
    damage(tiny_revisited / "gnd_tiny.pkl")
    assert _eval(["--dataset-dir", str(tiny_revisited), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "gnd_tiny.pkl" in err and message in err and "write it again" in err
    assert not (tiny_revisited / "ran").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("layer1.weight: 0.5\n"), "not a PyTorch"),
        (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated"),
    ],
    ids=["zero-byte", "text", "truncated"],
)
def test_a_bad_weights_file_is_one_line_naming_it(tiny_revisited, tmp_path, capsys, damage, message):
    import torch

    from irlib.models import create_model

    weights = tmp_path / "model.pth"
    torch.save(create_model("gem", backbone="efficientnet_lite0").state_dict(), weights)
    damage(weights)
    args = ["--dataset-dir", str(tiny_revisited), "--weights", str(weights), "--out", str(tmp_path / "run")]
    assert _eval(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "model.pth" in err and message in err, err


def test_universal_benchmarks_run_from_the_command_line_into_ordinary_run_folders(small_demo, tmp_path, capsys):
    from irlib.results import load_runs

    uned = ["--data-root", str(small_demo), "--dataset", "uned", "--domains", "cars", "inshop", "gldv2"]
    assert _eval([*uned, "--out", str(tmp_path / "uned")]) == 0
    metrics = json.loads((tmp_path / "uned" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["benchmark"]) == ("uned", "uned-merged")
    assert set(metrics["metrics"]["per_domain"]) == {"cars", "inshop", "gldv2"}
    assert metrics["settings"]["image_size"] == 64  # --image-size overrides the uned preset's 224
    per_query = (tmp_path / "uned" / "per_query.csv").read_text().splitlines()
    assert per_query[0] == "query,domain,R@1,MP@5,AP@5,n_relevant"
    assert len(per_query) - 1 == metrics["settings"]["n_queries"]
    ilias = ["--data-root", str(small_demo), "--dataset", "ilias", "--out", str(tmp_path / "ilias")]
    assert _eval(ilias) == 0
    report = json.loads((tmp_path / "ilias" / "metrics.json").read_text())["metrics"]
    assert {"mAP@1000", "oracle", "scale", "clutter", "categories", "subcategories"} <= report.keys()
    runs = load_runs(tmp_path).set_index("dataset")
    assert runs.loc["uned", "R@1"] == metrics["metrics"]["R@1"] and runs.loc["ilias", "mAP@1000"] == report["mAP@1000"]
    assert main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "uned-merged" in out and "mAP@1000" in out
    assert _eval([*uned, "--query-boxes", "--out", str(tmp_path / "bad")]) == 2
    assert "--query-boxes does not apply to uned" in capsys.readouterr().err


def test_a_benchmark_database_extracted_once_is_evaluated_from_its_features(small_demo, tmp_path, capsys):
    model = ["--backbone", "efficientnet_lite0", "--image-size", "64", "--scales", "1", "--pretrained"]
    where = ["--data-root", str(small_demo), "--dataset", "mini-ilias", "--pretrained"]  # the same weights
    assert main(["extract", *where[:-1], *model, "--out", str(tmp_path / "feats"), "--chunk-size", "4"]) == 0
    assert _eval([*where, "--out", str(tmp_path / "direct")]) == 0
    assert _eval([*where, "--database-features", str(tmp_path / "feats"), "--out", str(tmp_path / "from")]) == 0
    direct, stored = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("direct", "from"))
    assert stored["mAP@1000"] == pytest.approx(direct["mAP@1000"], abs=0.5)  # fp16 storage of the features
    assert (
        _eval(
            [*where, "--database-features", str(tmp_path / "feats"), "--image-size", "48", "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert "other settings (image_size)" in capsys.readouterr().err

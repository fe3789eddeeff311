"""Training end to end on the fixture data: run folder, exact repeats, resume after SIGKILL and
SIGINT (real subprocesses), NaN stops, torchrun/DDP on loopback, and the evaluate / predict commands."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.train import TrainingError, fit, load_run_model, resolve_config
from cnnlab.train.checkpoint import load_checkpoint, load_weights

import procs

FIXTURES = Path(__file__).parent.parent / "fixtures"
QUICK = {"dataset": "fashion-mnist", "data_dir": str(FIXTURES), "batch_size": 32, "eval_batch_size": 64}


def run_fit(tmp_path: Path, name: str, **kw):
    config = resolve_config(kw.pop("model", "lenet"), **{**QUICK, "out": str(tmp_path / name), **kw})
    return fit(config, quiet=True)


def cli(*args: str, env_extra: dict | None = None, merge: bool = True) -> subprocess.Popen:
    """``python -m cnnlab ARGS`` in a subprocess; stderr merged into stdout unless ``merge`` is False."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge else subprocess.DEVNULL, text=True, env=env)


def train_args(out: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "lenet", "--data-dir", str(FIXTURES), "--batch-size", "32", "--eval-batch-size", "64",
            "--epochs", str(epochs), "--out", str(out), "--quiet", *extra]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_weights(a)[0], load_weights(b)[0]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def comparable(history):
    return [{k: row[k] for k in ("epoch", "train_loss", "train_acc", "test_acc", "lr")} for row in history]


def test_fit_writes_a_complete_run_folder(tmp_path):
    result = run_fit(tmp_path, "run", epochs=2)
    folder = result.folder
    for name in ("config.json", "metrics.csv", "model.safetensors", "checkpoint.pt", "curves.png", "predictions.png", "confusion.png"):
        assert (folder / name).stat().st_size > 0, name
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert json.loads((folder / "config.json").read_text())["lr"] == 0.9  # the book's preset, resolved
    state, meta = load_weights(folder)
    assert meta["model"] == "lenet" and meta["classes"][9] == "ankle boot" and meta["image_size"] == 28
    assert load_checkpoint(folder)["epoch"] == 3  # next epoch to run


def test_a_seed_repeats_exactly_on_cpu(tmp_path):
    a = run_fit(tmp_path, "a", epochs=2, model="lenet-modern")
    b = run_fit(tmp_path, "b", epochs=2, model="lenet-modern")
    assert comparable(a.history) == comparable(b.history)
    assert same_weights(a.folder, b.folder)


def test_modern_lenet_learns_the_fixture(tmp_path):
    # no augmentation: a horizontal flip turns one synthetic class into another
    result = run_fit(tmp_path, "m", epochs=3, model="lenet-modern", augment=False)
    assert result.final["test_acc"] > 0.8  # 10 synthetic classes: chance is 0.1


def ran(*args: str, merge: bool = True) -> tuple[int, str]:
    """``python -m cnnlab ARGS`` run to its end (a child forked from the torch-preloaded server, tests/procs.py): its
    exit status and its output (stdout, then stderr unless ``merge`` is False)."""
    done = procs.run("-m", "cnnlab", *args, timeout=120)
    return done.returncode, done.stdout + (done.stderr if merge else "")


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    seen, deadline = "", time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}; output:\n{seen}")


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tmp_path):
    reference = run_fit(tmp_path, "reference", epochs=4)
    killed = tmp_path / "killed"
    proc = cli(*train_args(killed, 4))
    _wait_for(proc, "epoch   2/4")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed)["epoch"] in (2, 3, 4)  # killed after epoch 1 or 2, before the end
    resumed = fit(resume=killed, quiet=True)
    assert comparable(resumed.history) == comparable(reference.history)
    assert same_weights(killed, reference.folder)


SLOW_CHECKPOINT = """
import os, sys, time
import cnnlab.files as files
original = files._write_all
def slow(fd, blob):
    if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}") and "epoch   2/" in open(sys.argv[-1]).read():
        original(fd, blob[: len(blob) // 2])
        os.fsync(fd)
        print("WRITING CHECKPOINT", flush=True)
        time.sleep(60)  # killed here, mid-write
    original(fd, blob)
files._write_all = slow
from cnnlab.cli import main
sys.exit(main(sys.argv[1:-1]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    reference = run_fit(tmp_path, "reference", epochs=3)
    killed, log = tmp_path / "killed", tmp_path / "log.txt"
    log.write_text("")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_CHECKPOINT, *train_args(killed, 3), str(log)],
                                stdout=sink, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.time() + 120
        while "WRITING CHECKPOINT" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert "WRITING CHECKPOINT" in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert any(p.name.startswith(".checkpoint.pt.") for p in killed.iterdir())  # the half-written file
    assert load_checkpoint(killed)["epoch"] == 2  # the last complete checkpoint: after epoch 1
    resumed = fit(resume=killed, quiet=True)
    assert comparable(resumed.history) == comparable(reference.history)
    assert same_weights(killed, reference.folder)


def test_sigint_saves_a_checkpoint_mid_epoch_and_resumes_exactly(tmp_path):
    reference = run_fit(tmp_path, "reference", epochs=3, batch_size=8)
    interrupted = tmp_path / "interrupted"
    args = train_args(interrupted, 3)
    args[args.index("--batch-size") + 1] = "8"
    proc = cli(*args)
    _wait_for(proc, "epoch   1/3")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted: checkpoint saved at epoch" in out
    state = load_checkpoint(interrupted)
    assert state["epoch"] >= 2
    resumed = fit(resume=interrupted, quiet=True)
    assert comparable(resumed.history) == comparable(reference.history)
    assert same_weights(interrupted, reference.folder)


def test_max_seconds_stops_mid_epoch_reports_the_shortened_run_and_resumes_exactly(tmp_path):
    reference = run_fit(tmp_path, "reference", epochs=2)
    stopped = run_fit(tmp_path, "stopped", epochs=2, max_seconds=0.05)
    assert stopped.status == "time limit" and stopped.history == [] and 0 < stopped.partial["epoch"] < 1
    assert 0 <= stopped.partial["test_acc"] <= 1 and stopped.final is stopped.partial
    state = load_checkpoint(stopped.folder)
    assert state["epoch"] == 1 and 0 < state["step"] < 19  # a checkpoint at the step it stopped
    resumed = fit(resume=stopped.folder, quiet=True, max_seconds=1000)
    assert resumed.status == "completed"
    assert comparable(resumed.history) == comparable(reference.history)
    assert same_weights(stopped.folder, reference.folder)
    with pytest.raises(ValueError, match="max_seconds must be a positive number of seconds, got 0"):
        run_fit(tmp_path, "never", max_seconds=0)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    first = run_fit(tmp_path, "nan", epochs=1, model="lenet-modern")
    weights_before = load_weights(first.folder)[0]
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch 2, step \d+; stopped"):
        fit(resume=first.folder, quiet=True, epochs=2, lr=1e38)
    assert load_checkpoint(first.folder)["epoch"] == 2  # still the end of epoch 1
    after = load_weights(first.folder)[0]
    assert all(torch.equal(after[k], weights_before[k]) for k in after)


def test_resume_refuses_changes_that_break_the_checkpoint(tmp_path):
    first = run_fit(tmp_path, "run", epochs=1)
    with pytest.raises(ValueError, match="cannot change optimizer='sgd' \\(asked 'adam'\\) when resuming"):
        fit(resume=first.folder, quiet=True, epochs=2, optimizer="adam")
    with pytest.raises(ValueError, match="cannot change model='lenet' \\(asked 'resnet18'\\)"):
        fit(resume=first.folder, quiet=True, model="resnet18")


def test_two_processes_end_with_the_weights_of_one(tmp_path):
    single = run_fit(tmp_path, "single", epochs=2, batch_size=64)
    proc = cli(*train_args(tmp_path / "ddp", 2, "--nproc", "2", "--batch-size", "64"), env_extra={"OMP_NUM_THREADS": "1"})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert out.count("epoch   2/2") == 1  # rank 0 alone prints
    assert "Grad strides do not match" not in out  # gradients keep their parameters' layout (DDP's contract)
    a, b = load_weights(single.folder)[0], load_weights(tmp_path / "ddp")[0]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key


def test_evaluate_and_predict_commands(tmp_path):
    result = run_fit(tmp_path, "run", epochs=2, model="lenet-modern", augment=False)
    code, out = ran("evaluate", str(result.folder), "--data-dir", str(FIXTURES), "--json", merge=False)
    assert code == 0, out
    report = json.loads(out)
    assert abs(report["test_acc"] - result.final["test_acc"]) < 1e-9 and len(report["confusion"]) == 10
    from PIL import Image

    from cnnlab.data import Batches, load_dataset

    data = load_dataset("fashion-mnist", FIXTURES, fetch=False)
    model, meta = load_run_model(result.folder)
    x, _, _ = next(Batches(data.test_images[:1], data.test_labels[:1], 1, mean=meta["mean"], std=meta["std"],
                           normalize=meta["normalize"]).epoch(0))
    expected = meta["classes"][int(model(x).argmax())]
    Image.fromarray(data.test_images[0, 0].numpy()).save(tmp_path / "item.png")
    Image.fromarray(data.test_images[0, 0].numpy()).resize((56, 56)).convert("RGB").save(tmp_path / "big.png")
    (tmp_path / "notes.png").write_text("this is not an image")
    code, out = ran("predict", str(result.folder), str(tmp_path / "item.png"), str(tmp_path / "big.png"), "--json", "--top", "2", merge=False)
    exact, resized = json.loads(out)
    assert exact["predictions"][0]["class"] == expected  # the same preprocessing as training
    assert len(resized["predictions"]) == 2 and resized["predictions"][0]["probability"] >= resized["predictions"][1]["probability"]
    # one bad file among good ones: the good ones are still classified, the bad one named, exit 1
    code, out = ran("predict", str(result.folder), str(tmp_path / "item.png"), str(tmp_path / "notes.png"), str(tmp_path / "big.png"))
    assert code == 1 and "Traceback" not in out
    assert "cnnlab: error: " + str(tmp_path / "notes.png") + ": not a readable image" in out
    assert f"{tmp_path / 'item.png'}\n" in out and f"{tmp_path / 'big.png'}\n" in out and out.count("%") == 6
    for top in ("0", "-1", "x"):
        code, out = ran("predict", str(result.folder), str(tmp_path / "item.png"), "--top", top)
        assert code == 2 and "--top must be" in out and "Traceback" not in out


def test_unknown_model_and_dataset_list_the_valid_ones(tmp_path):
    code, out = ran("train", "resnet99", "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown model 'resnet99'; choose one of: lenet" in out
    code, out = ran("train", "--dataset", "imagenet", "--out", str(tmp_path / "y"))
    assert code == 2 and "unknown data set 'imagenet'" in out


def test_amp_runs_on_the_cpu_in_bfloat16_and_the_run_says_so(tmp_path):
    result = run_fit(tmp_path, "amp", epochs=1, model="bn-lenet", amp=True)
    assert load_weights(result.folder)[1]["amp"] == "bfloat16" and math.isfinite(result.final["train_loss"])


def test_warm_up_then_cosine_schedule():
    from cnnlab.train.loop import _schedule

    config = resolve_config("fast", epochs=4, warmup_epochs=0.5)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=config.lr)
    factor = _schedule(config, optimizer, steps_per_epoch=10).lr_lambdas[0]
    assert [factor(s) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]  # 5 warm-up steps, from lr/5 to lr
    assert factor(5) == 1.0 and math.isclose(factor(5 + 35 // 2), 0.5 * (1 + math.cos(math.pi * 17 / 35)))
    assert factor(40) == 0.0
    with pytest.raises(ValueError, match=r"warmup_epochs must be in \[0, epochs=4\], got 5"):
        resolve_config("fast", epochs=4, warmup_epochs=5)


def test_cpu_recipes_train_on_cifar10_and_evaluate_with_flips(tmp_path):
    """A CPU recipe on the colour fixture (32 px images, resized to the model's 28), then evaluate --tta flip."""
    result = run_fit(tmp_path, "cifar", model="resnet-cpu", dataset="cifar10", epochs=1, augment=False)
    meta = json.loads((result.folder / "config.json").read_text())
    assert meta["model"] == "resnet-cpu" and meta["optimizer"] == "adamw" and math.isfinite(result.final["train_loss"])
    from cnnlab.data import Batches, load_dataset
    from cnnlab.train import predict_probabilities

    model, meta = load_run_model(result.folder)
    model.eval()
    data = load_dataset("cifar10", FIXTURES, fetch=False, image_size=meta["image_size"])
    batches = Batches(data.test_images, data.test_labels, 64, mean=meta["mean"], std=meta["std"], normalize=meta["normalize"],
                      image_size=meta["image_size"])
    with torch.no_grad():
        probs = torch.cat([(model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2 for x, _, _ in batches.epoch(0)])
        assert torch.allclose(torch.cat([predict_probabilities(model, x, "flip") for x, _, _ in batches.epoch(0)]), probs)
    expected = int((probs.argmax(1) == data.test_labels).sum()) / len(data.test_labels)
    code, out = ran("evaluate", str(result.folder), "--data-dir", str(FIXTURES), "--tta", "flip", "--json", merge=False)
    report = json.loads(out)
    assert report["tta"] == "flip" and abs(report["test_acc"] - expected) < 1e-9


def test_list_shows_size_cost_and_what_each_recipe_reached():
    code, out = ran("train", "--list", merge=False)
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    measured = json.loads((Path(__file__).parents[2] / "src" / "cnnlab" / "train" / "recipes.json").read_text())
    assert set(measured) >= {"fast", "alexnet-cpu", "vgg-cpu", "nin-cpu", "googlenet-cpu", "resnet-cpu", "densenet-cpu"}
    assert "29,178" in lines["fast"] and " 1.9 M" in lines["fast"] and f"{measured['fast']['test_acc']:.3f} in" in lines["fast"]
    assert "224 px" in lines["alexnet"] and "28 px" in lines["resnet-cpu"] and "ratio=4" in lines["vgg11"]

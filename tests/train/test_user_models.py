"""Training the user's own network: fit(nn.Module, data in any form), package.module:factory from the
command line with every other command working on that run, and one clear message for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import cnnlab
from cnnlab.data import load_dataset
from cnnlab.train.checkpoint import load_weights

import procs

FIXTURES = Path(__file__).parent.parent / "fixtures"
SRC = str(Path(__file__).parents[2] / "src")
FACTORY = '''import torch.nn as nn

def small(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
'''


def tiny_net(classes: int = 10, channels: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(cnnlab.nn.Conv2d(channels, 4, 5, padding=2), nn.ReLU(), cnnlab.nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 14 * 14, classes))


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", FIXTURES, fetch=False)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return procs.run("-m", "cnnlab", *args, cwd=cwd)


def test_a_factory_run_from_the_command_line_works_with_every_other_command(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "mynets.py").write_text(FACTORY)
    trained = cli("train", "mynets:small", "--model-args", '{"width": 6}', "--data-dir", str(FIXTURES), "--epochs", "1",
                  "--batch-size", "32", "--lr", "0.1", "--out", "runs/mine", "--quiet", cwd=work)
    assert trained.returncode == 0, trained.stderr
    run = work / "runs" / "mine"
    meta = load_weights(run)[1]
    assert meta["model"] == "mynets:small" and meta["model_kwargs"] == {"width": 6} and meta["factory_path"] == str(work)
    # every command, from another folder
    evaluate = cli("evaluate", str(run), "--data-dir", str(FIXTURES), "--json", cwd=elsewhere)
    assert evaluate.returncode == 0 and json.loads(evaluate.stdout)["count"] == 200, evaluate.stderr
    image = tmp_path / "item.png"
    from PIL import Image

    Image.new("L", (28, 28), 90).save(image)
    predict = cli("predict", str(run), str(image), "--json", cwd=elsewhere)
    assert predict.returncode == 0 and len(json.loads(predict.stdout)["predictions"]) == 3, predict.stderr
    summary = cli("summary", str(run), cwd=elsewhere)
    assert summary.returncode == 0 and "6x28x28" in summary.stdout, summary.stderr
    for what in (["kernels"], ["features", "--test-index", "1"], ["receptive", "--layer", "3", "--unit", "2,2", "--test-index", "1"]):
        viz = cli("viz", what[0], str(run), *what[1:], "--data-dir", str(FIXTURES), "--out", str(tmp_path / f"{what[0]}.png"), cwd=elsewhere)
        assert viz.returncode == 0 and (tmp_path / f"{what[0]}.png").stat().st_size > 1000, viz.stderr
    resumed = cli("train", "--resume", str(run), "--epochs", "2", "--quiet", cwd=elsewhere)
    assert resumed.returncode == 0 and "epoch   2/2" in resumed.stdout, resumed.stderr
    page = cnnlab.explore(run, data_dir=str(FIXTURES), display=False)
    try:
        import urllib.request

        info = json.load(urllib.request.urlopen(page.url + "api/info"))
        assert info["model"] == "mynets:small" and info["test_images"] == 200
    finally:
        page.stop()
    assert not page.running


def test_fit_takes_a_module_and_data_in_every_form(tmp_path, fashion):
    x, y, xt, yt = fashion.train_images, fashion.train_labels, fashion.test_images, fashion.test_labels
    forms = {
        "name": "fashion-mnist",
        "tensors": (x, y),
        "tensor splits": ((x, y), (xt, yt)),
        "float tensors": ((x.float() / 255, y), (xt.float() / 255, yt)),
        "dataset": TensorDataset(x.float() / 255, y),
        "datasets": (TensorDataset(x, y), TensorDataset(xt, yt)),
        "loaders": (DataLoader(TensorDataset(x.float() / 255, y), batch_size=32, shuffle=True),
                    DataLoader(TensorDataset(xt.float() / 255, yt), batch_size=64)),
    }
    for i, (what, data) in enumerate(forms.items()):
        result = cnnlab.fit(tiny_net(), data, data_dir=str(FIXTURES), epochs=1, lr=0.1, batch_size=32, out=str(tmp_path / str(i)),
                            quiet=True)
        assert result.final["epoch"] == 1 and 0 <= result.final["test_acc"] <= 1, what
        assert result.final["train_acc"] > 0.3, what  # it learns something in one epoch of the (easy) fixture
        config = json.loads((result.folder / "config.json").read_text())
        assert config["model"] == "python:Sequential"


def test_a_notebook_run_keeps_its_weights_and_resumes_exactly(tmp_path, fashion):
    data = ((fashion.train_images, fashion.train_labels), (fashion.test_images, fashion.test_labels))
    whole = cnnlab.fit(tiny_net(), data, epochs=3, lr=0.1, batch_size=32, out=str(tmp_path / "whole"), quiet=True)
    part = cnnlab.fit(tiny_net(), data, epochs=1, lr=0.1, batch_size=32, out=str(tmp_path / "part"), quiet=True)
    resumed = cnnlab.fit(tiny_net(), data, epochs=3, resume=part.folder, quiet=True)
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in whole.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    meta = load_weights(part.folder)[1]
    assert meta["architecture"].startswith("Sequential(") and "Conv2d(1, 4" in meta["architecture"]
    with pytest.raises(ValueError, match=r"was defined in Python, so it cannot be rebuilt from its name. In Python: cnnlab.load_run"):
        cnnlab.load_run(part.folder)
    run = cnnlab.load_run(part.folder, model=tiny_net())
    assert run.history[-1]["epoch"] == 3 and isinstance(run.model, nn.Sequential)
    evaluate = cli("evaluate", str(part.folder), cwd=tmp_path)
    assert evaluate.returncode == 2 and "Traceback" not in evaluate.stderr
    assert "was defined in Python" in evaluate.stderr and "cnnlab train mymodule:factory" in evaluate.stderr
    with pytest.raises(ValueError, match="was defined in Python; resume it with cnnlab.fit"):
        cnnlab.fit(resume=part.folder, epochs=4)


class Pairs(Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return self.item


@pytest.mark.parametrize(("model", "data", "says"), [
    (lambda: tiny_net(classes=7), "fashion-mnist", r"Sequential gives output \(1, 7\) for one 1x28x28 input; expected \(1, 10\)"),
    (lambda: tiny_net(channels=3), "fashion-mnist", r"Sequential cannot take 1x28x28 inputs .*layer '0' \(Conv2d\)"),
    (lambda: tiny_net(), (Pairs({"image": 1}), Pairs({"image": 1})), r"the training data yields dict; expected \(images, labels\)"),
    (lambda: tiny_net(), (Pairs((torch.zeros(28, 28), 3)), Pairs((torch.zeros(28, 28), 3))), r"yields images of shape \(40, 28, 28\); expected \(B, C, H, W\)"),
    (lambda: tiny_net(), (torch.zeros(10, 1, 28, 28), torch.zeros(10)), r"labels must be integer class indices, got dtype torch.float32"),
    (lambda: tiny_net(), DataLoader(TensorDataset(torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long))), r"data must be a data set name"),
    (lambda: "nowhere_module:net", "fashion-mnist", r"no module named 'nowhere_module' in the current folder"),
])
def test_bad_models_and_data_are_one_clear_error_before_any_folder(tmp_path, model, data, says):
    with pytest.raises((ValueError, TypeError), match=says):
        cnnlab.fit(model(), data, data_dir=str(FIXTURES), epochs=1, out=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("data", "says"), [
    ("subset", "subset 3 is too small: fashion-mnist has 10 classes"),
    ("one tensor", "(images, labels) tensors of 1 example: the training part would be empty (0 training and 1 test examples)"),
    ("one-example Dataset", "a Dataset of 1 example: the training part would be empty"),
    ("empty test Dataset", "the (train, test) data given: the test part would be empty (8 training and 0 test examples)"),
])
def test_training_with_an_empty_training_or_test_part_is_refused_before_a_run_folder_exists(tmp_path, data, says):
    """An accuracy on no test images is not 0.0000: fit says so, naming the sizes and what would work."""
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 2
    given = {"subset": "fashion-mnist", "one tensor": (x[:1], y[:1]), "one-example Dataset": TensorDataset(x[:1], y[:1]),
             "empty test Dataset": (TensorDataset(x, y), TensorDataset(x[:0], y[:0]))}[data]
    with pytest.raises(ValueError) as err:
        cnnlab.fit(tiny_net(), given, data_dir=str(FIXTURES), subset=3 if data == "subset" else None, epochs=1,
                   out=str(tmp_path / "run"), quiet=True, classes=None if data == "subset" else ["a", "b"])
    assert says in str(err.value)
    assert "give" in str(err.value) or "use a subset of 10" in str(err.value)  # and what would work
    assert not (tmp_path / "run").exists()


def test_a_subset_holds_every_class_in_both_parts(fashion):
    from cnnlab.train.inputs import _subset

    for n in (10, 23):
        part = _subset(fashion, n, seed=3)
        assert len(part.train_labels) == n and len(part.test_labels) == max(-(-n // 6), 10)
        assert set(part.train_labels.tolist()) == set(part.test_labels.tolist()) == set(range(10))
        counts = torch.bincount(part.train_labels, minlength=10)
        assert counts.max() - counts.min() <= 1  # the classes take turns
    again = _subset(fashion, 23, seed=3)
    assert torch.equal(again.train_images, _subset(fashion, 23, seed=3).train_images)  # seeded

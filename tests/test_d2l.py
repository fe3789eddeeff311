"""cnnlab.d2l: the book's names with its signatures and printed lines, its data offline, train_ch6 on
cnnlab's loop and the scratch ops, the projection, the CPU recipe pointer and the time budget."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

FIXTURES = Path(__file__).parent / "fixtures"
BOOK_NAMES = ["load_data_fashion_mnist", "train_ch6", "try_gpu", "corr2d", "Accumulator", "Timer", "Animator", "accuracy",
              "tensor", "reshape", "zeros", "ones", "stack", "concat", "reduce_sum", "normal", "transpose", "size", "matmul",
              "float32", "arange", "abs", "evaluate_accuracy_gpu"]


@pytest.fixture
def d2l(monkeypatch):
    """The module, imported here (its import routes torch's layers to the scratch ops process-wide), with the
    routing switched off again afterwards so no other test compares the scratch ops with themselves."""
    monkeypatch.delenv("CNNLAB_D2L_BUDGET", raising=False)
    from cnnlab import d2l

    d2l.use_scratch(True)
    d2l.budget(None)
    yield d2l
    d2l.budget(None)
    d2l.use_scratch(False)


def lenet() -> nn.Module:  # the book's LeNet, verbatim
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def test_every_name_the_chapters_call_exists_with_the_books_behaviour(d2l):
    assert all(hasattr(d2l, name) for name in BOOK_NAMES)
    X = d2l.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    K = d2l.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert d2l.corr2d(X, K).tolist() == [[19.0, 25.0], [37.0, 43.0]]
    assert d2l.size(X) == 9 and d2l.reduce_sum(X).item() == 36 and d2l.transpose(K).tolist() == [[0.0, 2.0], [1.0, 3.0]]
    assert d2l.concat((X, X)).shape == (6, 3) and d2l.reshape(d2l.arange(6), (2, 3)).shape == (2, 3)
    assert d2l.float32 is torch.float32 and d2l.try_gpu() == torch.device("cpu" if not torch.cuda.is_available() else "cuda:0")
    assert d2l.accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, 1])) == 2.0
    acc = d2l.Accumulator(2)
    acc.add(1, 2.5)
    acc.add(torch.tensor(2.0), 0.5)
    assert acc[0] == 3.0 and acc[1] == 3.0
    timer = d2l.Timer()
    assert timer.stop() >= 0 and len(timer.cumsum()) == 1
    animator = d2l.Animator(xlabel="epoch", xlim=[1, 3], legend=["train loss", "train acc", "test acc"])
    animator.add(1, (0.5, 0.8, None))
    animator.add(2, (None, None, 0.7))
    assert animator.X == [[1], [1], [2]] and animator.Y == [[0.5], [0.8], [0.7]]


def test_fashion_mnist_as_the_books_two_loaders_offline(d2l):
    train_iter, test_iter = d2l.load_data_fashion_mnist(32, data_dir=str(FIXTURES))
    X, y = next(iter(train_iter))
    assert X.shape == (32, 1, 28, 28) and X.dtype == torch.float32 and 0 <= X.min() and X.max() <= 1 and y.dtype == torch.int64
    assert len(train_iter.dataset) == 600 and isinstance(train_iter, torch.utils.data.DataLoader)
    image, label = train_iter.dataset[0]  # one item as torchvision's ToTensor gives it
    assert image.shape == (1, 28, 28) and isinstance(label, int)
    big, _ = next(iter(d2l.load_data_fashion_mnist(8, resize=64, data_dir=str(FIXTURES))[1]))
    assert big.shape == (8, 1, 64, 64)
    with pytest.raises(ValueError, match="resize must be a positive int or a pair of them, got -3"):
        d2l.load_data_fashion_mnist(8, resize=-3, data_dir=str(FIXTURES))


@pytest.mark.parametrize("size", [64, 20])
def test_resize_is_pils_bilinear_as_torchvisions_resize_gives_it(d2l, size):
    """Up and down: within one 8-bit level of PIL's own resize of the uint8 image (what Resize then ToTensor give)."""
    from PIL import Image

    from cnnlab.d2l import _resize
    from cnnlab.data import load_dataset

    images = load_dataset("fashion-mnist", FIXTURES, fetch=False).test_images[:6]  # (6, 1, 28, 28) uint8
    ours = _resize(images.float() / 255, (size, size))
    pil = np.stack([np.asarray(Image.fromarray(im[0].numpy()).resize((size, size), Image.BILINEAR)) for im in images])
    diff = (ours[:, 0] * 255 - torch.from_numpy(pil).float()).abs()
    assert diff.max() <= 1.0 and diff.mean() < 0.3  # PIL sums in fixed point: a fifth of the pixels round the other way


def test_train_ch6_prints_the_books_lines_and_trains_on_the_scratch_ops(d2l, capsys, tmp_path):
    torch.manual_seed(0)
    net = lenet()
    train_iter, test_iter = d2l.load_data_fashion_mnist(32, data_dir=str(FIXTURES))
    before = dict(d2l.use_scratch().routed)
    result = d2l.train_ch6(net, train_iter, test_iter, 2, 0.9, d2l.try_gpu(), out=str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert out.startswith("training on cpu\n")
    last = result.final
    assert f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}\n" in out
    assert re.search(r"\n\d+\.\d examples/sec on cpu\n", out)
    assert re.search(r"measured [\d.e-]+ s a batch over 3 batches: 2 epoch\(s\) of 19 batches would take about", out)
    routed = d2l.use_scratch().routed
    assert routed["conv2d"] - before.get("conv2d", 0) >= 2 * 19 * 2  # two layers, every training step (and evaluation)
    assert (tmp_path / "run" / "model.safetensors").exists() and len(result.history) == 2
    for m in net.modules():  # Xavier-uniform weights, as the book initialises them (bound sqrt(6 / (fan_in + fan_out)))
        if isinstance(m, nn.Linear):
            assert m.weight.abs().max() <= (6 / sum(m.weight.shape)) ** 0.5 * 1.5


def test_a_budget_stops_training_and_reports_the_shortened_run(d2l, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_D2L_BUDGET", "0.05")
    train_iter, test_iter = d2l.load_data_fashion_mnist(16, data_dir=str(FIXTURES))
    result = d2l.train_ch6(lenet(), train_iter, test_iter, 5, 0.9, out=str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert result.status == "time limit" and result.partial is not None and result.history == []
    assert re.search(r"stopped by the time budget \(0\.05 s\) at epoch 0\.\d\d of 5: the numbers below are those of this "
                     r"shortened run", out)
    assert f"test acc {result.partial['test_acc']:.3f}" in out
    assert d2l.budget(100) == 100 and d2l._in_force() == 100  # the call wins over the environment
    monkeypatch.setenv("CNNLAB_D2L_BUDGET", "soon")
    d2l.budget(None)
    with pytest.raises(ValueError, match="CNNLAB_D2L_BUDGET='soon' is not a number of seconds"):
        d2l.train_ch6(lenet(), train_iter, test_iter, 1, 0.9)
    with pytest.raises(ValueError, match="budget: seconds must be a positive number, got -1"):
        d2l.budget(-1)


def test_the_chapters_big_networks_are_told_and_pointed_to_their_cpu_recipe(d2l, capsys):
    from cnnlab.d2l import _book_model, _Projection

    alexnet = nn.Sequential(nn.Conv2d(1, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
                            nn.Conv2d(96, 256, kernel_size=5, padding=2))
    nin = nn.Sequential(nn.Conv2d(1, 96, kernel_size=11, stride=4), nn.Conv2d(96, 96, kernel_size=1))
    vgg = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=1) for _ in range(8)])

    class Residual(nn.Module):  # the book's class names tell ResNet, GoogLeNet and DenseNet
        pass

    assert [_book_model(n) for n in (alexnet, nin, vgg, nn.Sequential(Residual()), lenet())] == \
        ["alexnet-cpu", "nin-cpu", "vgg-cpu", "resnet-cpu", None]
    projection = _Projection(10, "alexnet-cpu")
    projection.epoch_start(1, 469, 0)
    for step in range(5):  # the first two batches (30 s each: warming up) are left out of the measure
        projection.step(1, step, [0.0, 0.0, 128.0 * (step + 1), 30.0 * min(step + 1, 2) + 2.0 * max(step - 1, 0)])
    line = capsys.readouterr().out.strip()
    assert line.startswith("measured 2 s a batch over 3 batches: 10 epoch(s) of 469 batches would take about 2.6 h here; "
                           "on a CPU, `cnnlab train alexnet-cpu` reaches ")
    assert "test accuracy in" in line and line.endswith("`cnnlab train --list`)")

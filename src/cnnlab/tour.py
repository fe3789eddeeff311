"""``cnnlab tour``: the worked examples of D2L chapter 7, computed by cnnlab.ops and checked.

Every number is computed here by cnnlab's own operations (never printed from a constant); the
expected values from shared/REFERENCE.md are the check. Each step prints what it computed and
whether it matches, and saves a figure where a picture helps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import ops
from .files import save_figure
from .nn import Conv2d, MaxPool2d

__all__ = ["STEPS", "run_tour"]


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[Path | None], tuple[str, bool, list[Path]]]
    against: str = "the book"


def _show(t: torch.Tensor) -> str:
    return "\n".join("    " + line for line in str(t.tolist() if t.dim() < 2 else t).splitlines())


def _heat(matrices: dict[str, torch.Tensor], path: Path, title: str) -> Path:
    from .viz.plots import new_figure

    fig = new_figure(figsize=(3.2 * len(matrices), 3), dpi=110)
    axes = fig.subplots(1, len(matrices), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        im = ax.imshow(m.float().numpy(), cmap="RdBu_r" if m.min() < 0 else "viridis", interpolation="nearest")
        ax.set_title(name, fontsize=8)
        for (i, j), v in zip(torch.cartesian_prod(torch.arange(m.shape[0]), torch.arange(m.shape[1])).tolist(), m.flatten().tolist()):
            if m.numel() <= 64:
                ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7, color="black")
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def step_corr2d(out):
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    Y = ops.corr2d(X, K)
    ok = torch.equal(Y, torch.tensor([[19.0, 25.0], [37.0, 43.0]]))
    figs = [_heat({"X": X, "K": K, "corr2d(X, K)": Y}, out / "corr2d.png", "cross-correlation")] if out else []
    return f"corr2d(X, K) =\n{_show(Y)}", ok, figs


def _edge_image():
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    return X


def step_edges(out):
    X, K = _edge_image(), torch.tensor([[1.0, -1.0]])
    Y, Yt = ops.corr2d(X, K), ops.corr2d(X.t(), K)
    ok = torch.equal(Y, torch.tensor([[0.0, 1, 0, 0, 0, -1, 0]]).expand(6, 7)) and torch.equal(Yt, torch.zeros(8, 5))
    figs = [_heat({"X (6x8)": X, "corr2d(X, [1,-1])": Y, "corr2d(X.T, [1,-1])": Yt}, out / "edges.png", "edge detection")] if out else []
    return f"edges found (6x7), every row {Y[0].tolist()}; on the transposed image: all zeros {tuple(Yt.shape)}", ok, figs


def step_learn_kernel(out):
    torch.manual_seed(0)
    X = _edge_image().reshape(1, 1, 6, 8)
    Y = ops.corr2d(_edge_image(), torch.tensor([[1.0, -1.0]])).reshape(1, 1, 6, 7)
    conv = Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    lines, losses = [], []
    for i in range(10):
        loss = ((conv(X) - Y) ** 2).sum()
        conv.zero_grad()
        loss.backward()
        conv.weight.data[:] -= 3e-2 * conv.weight.grad
        losses.append(loss.item())
        if (i + 1) % 2 == 0:
            lines.append(f"    epoch {i + 1}, loss {loss.item():.3f}")
    kernel = conv.weight.data.reshape(2)
    ok = losses[-1] < 0.3 and torch.allclose(kernel, torch.tensor([1.0, -1.0]), atol=0.2)
    figs = []
    if out:
        from .viz.plots import new_figure
        fig = new_figure(figsize=(4, 3), dpi=110)

        ax = fig.subplots()
        ax.plot(range(1, 11), losses, "-o")
        ax.set_xlabel("step")
        ax.set_ylabel("summed squared error")
        ax.set_title(f"learning [1, -1]: learned {[round(v, 3) for v in kernel.tolist()]}", fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / "learn_kernel.png")
        figs.append(out / "learn_kernel.png")
    return "\n".join(lines) + f"\n    learned kernel {[round(v, 4) for v in kernel.tolist()]}", ok, figs


def step_padding_stride(out):
    X = torch.rand(1, 1, 8, 8)
    cases = [({"kernel_size": 3, "padding": 1}, (8, 8)), ({"kernel_size": (5, 3), "padding": (2, 1)}, (8, 8)),
             ({"kernel_size": 3, "padding": 1, "stride": 2}, (4, 4)),
             ({"kernel_size": (3, 5), "padding": (0, 1), "stride": (3, 4)}, (2, 2))]
    lines, ok = [], True
    for kwargs, expected in cases:
        shape = tuple(Conv2d(1, 1, **kwargs)(X).shape[2:])
        ok &= shape == expected
        lines.append(f"    8x8 with {kwargs}: {shape[0]}x{shape[1]}")
    return "\n".join(lines), ok, []


def _multi_in():
    X = torch.stack([torch.arange(9.0).view(3, 3), torch.arange(1.0, 10.0).view(3, 3)])
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return X, K


def step_channels(out):
    X, K = _multi_in()
    Y = ops.corr2d_multi_in(X, K)
    K3 = torch.stack((K, K + 1, K + 2), 0)
    Y3 = ops.corr2d_multi_in_out(X, K3)
    ok = torch.equal(Y, torch.tensor([[56.0, 72.0], [104.0, 120.0]])) and torch.equal(
        Y3, torch.tensor([[[56.0, 72.0], [104.0, 120.0]], [[76.0, 100.0], [148.0, 172.0]], [[96.0, 128.0], [192.0, 224.0]]]))
    torch.manual_seed(0)
    X1, K1 = torch.normal(0, 1, (3, 3, 3)), torch.normal(0, 1, (2, 3, 1, 1))
    diff = float((ops.corr2d_multi_in_out_1x1(X1, K1) - ops.corr2d_multi_in_out(X1, K1)).abs().sum())
    ok &= diff < 1e-6
    figs = [_heat({"in 0": X[0], "in 1": X[1], "sum over inputs": Y}, out / "channels.png", "multiple input channels")] if out else []
    return (f"multi-in:\n{_show(Y)}\n    multi-in-out (3 kernels):\n{_show(Y3)}\n"
            f"    1x1 as a matrix product vs corr2d_multi_in_out: |difference| = {diff:.2e}"), ok, figs


def step_pooling(out):
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    mx, avg = ops.pool2d(X, (2, 2)), ops.pool2d(X, (2, 2), "avg")
    X4 = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    a = MaxPool2d(3)(X4)
    b = MaxPool2d(3, padding=1, stride=2)(X4)
    c = MaxPool2d((2, 3), stride=(2, 3), padding=(0, 1))(X4)
    two = MaxPool2d(3, padding=1, stride=2)(torch.cat((X4, X4 + 1), 1))
    expected = torch.tensor([[5.0, 7.0], [13.0, 15.0]])
    ok = (torch.equal(mx, torch.tensor([[4.0, 5.0], [7.0, 8.0]])) and torch.equal(avg, torch.tensor([[2.0, 3.0], [5.0, 6.0]]))
          and a.item() == 10.0 and torch.equal(b[0, 0], expected) and torch.equal(c[0, 0], expected)
          and torch.equal(two[0, 1], torch.tensor([[6.0, 8.0], [14.0, 16.0]])))
    figs = [_heat({"X (4x4)": X4[0, 0], "max 3, pad 1, stride 2": b[0, 0], "second channel (X+1)": two[0, 1]},
                  out / "pooling.png", "max pooling")] if out else []
    return (f"max 2x2:\n{_show(mx)}\n    avg 2x2:\n{_show(avg)}\n    MaxPool2d(3) on 4x4: {a.flatten().tolist()}; "
            f"padding 1, stride 2: {b[0, 0].tolist()}; (2,3) window, stride (2,3), padding (0,1): {c[0, 0].tolist()}\n"
            f"    two channels, second: {two[0, 1].tolist()}"), ok, figs


def step_second_order(out):
    """A gradient penalty and a Hessian-vector product through a scratch LeNet, beside torch's own kernels."""
    from .models import create_model

    torch.manual_seed(0)
    ours = create_model("bn-lenet").double().train()
    theirs = create_model("bn-lenet", backend="torch").double().train()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    v = [torch.randn_like(p) for p in ours.parameters()]
    penalties, hvps = [], []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(model(xi).logsumexp(1).sum(), xi, create_graph=True)  # WGAN-GP's input gradient
        penalty = (gx.flatten(1).norm(dim=1) - 1).pow(2).mean()
        penalties.append(torch.autograd.grad(penalty, list(model.parameters())))
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(4))
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        hvps.append(torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, v)), list(model.parameters())))
    def norm(ts):
        return sum(t.pow(2).sum() for t in ts).sqrt().item()

    def gap(a, b):  # the largest difference relative to the largest value, over all parameters
        return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(y.abs().max().item() for y in b)

    ok = gap(*penalties) < 1e-9 and gap(*hvps) < 1e-9 and norm(hvps[0]) > 0
    return (f"gradient penalty's gradient: |cnnlab| = {norm(penalties[0]):.10g}, |torch| = {norm(penalties[1]):.10g} "
            f"(largest relative difference {gap(*penalties):.1e})\n"
            f"    Hessian-vector product: |cnnlab| = {norm(hvps[0]):.10g}, |torch| = {norm(hvps[1]):.10g} "
            f"(largest relative difference {gap(*hvps):.1e})"), ok, []


STEPS = [
    Step("corr2d", "cross-correlation of a 3x3 input with a 2x2 kernel", step_corr2d),
    Step("edges", "detecting vertical edges with the kernel [1, -1]", step_edges),
    Step("learn-kernel", "learning the edge kernel from X and Y by gradient descent", step_learn_kernel),
    Step("padding-stride", "output shapes with padding and stride", step_padding_stride),
    Step("channels", "multiple input and output channels, 1x1 convolution", step_channels),
    Step("pooling", "max and average pooling, with padding, stride and channels", step_pooling),
    Step("second-order", "a gradient penalty and a Hessian-vector product through a scratch BN-LeNet, against torch", step_second_order, "torch"),
]


def run_tour(names: list[str] | None = None, out: str | Path | None = None, echo=print) -> bool:
    """Run the named steps (default: all); print each result and check; return True if all match."""
    known = {s.name: s for s in STEPS}
    for name in names or []:
        if name not in known:
            raise ValueError(f"unknown tour step {name!r}; steps: {', '.join(known)}")
    folder = Path(out) if out else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    all_ok = True
    for step in [known[n] for n in names] if names else STEPS:
        text, ok, figures = step.run(folder)
        all_ok &= ok
        echo(f"== {step.name}: {step.title}")
        echo(text if text.startswith("    ") else "    " + text)
        echo(f"    {'matches' if ok else 'DOES NOT MATCH'} {step.against}" + (f"; figure: {', '.join(map(str, figures))}" if figures else ""))
    return all_ok

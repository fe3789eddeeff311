"""Pictures of what a network computes: kernels, feature maps and receptive fields (D2L 7.2, 7.6).

    plot_kernels      one tile per (output channel, input channel), one shared colour scale with
                      its colour bar; RGB tiles for a first layer on colour images
    plot_features     the input and the feature maps of each chosen layer, prediction in the title
    plot_receptive    the input with the receptive field of one unit drawn on it
    activations       run a model once and keep the outputs of the chosen layers

Plain tensors in, a PNG out; matplotlib with the Agg backend.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..files import save_figure
from .plots import _image_for_display, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["activations", "conv_layers", "plot_attribution", "plot_features", "plot_kernels", "plot_receptive", "plot_top_patches",
           "tile_grid", "window_layers"]


def tile_grid(tiles: torch.Tensor, columns: int | None = None, pad: int = 1) -> torch.Tensor:
    """(N, h, w) -> one (1, H, W) image in [0, 1] with the tiles in a grid, each scaled on a shared range."""
    tiles = tiles.detach().float().cpu()
    n, h, w = tiles.shape
    columns = columns or max(1, int(n**0.5 + 0.999))
    rows = (n + columns - 1) // columns
    lo, hi = tiles.min(), tiles.max()
    tiles = (tiles - lo) / (hi - lo + 1e-12)
    grid = torch.ones(rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tiles[i]
    return grid[None]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the 2-D convolution layers, in order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def window_layers(model: nn.Module) -> list[str]:
    """Names of the convolution and pooling layers (the ones with feature maps worth looking at)."""
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


@torch.no_grad()
def activations(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` (1, C, H, W); return (logits, {layer: output (C, h, w)}) for ``layers``."""
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"no layer named {missing[0]!r}; layers with feature maps: {', '.join(window_layers(model))}")
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o[0].detach().cpu()))
             for name in layers]
    try:
        model.eval()
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits[0].cpu(), {name: outputs[name] for name in layers}


def plot_kernels(weight: torch.Tensor, path: str | Path | None = None, title: str = "", max_out: int = 64, max_in: int = 16) -> Figure:
    """Kernels of a convolution: rows = output channels, columns = input channels, one colour scale."""
    w = weight.detach().cpu().float()
    if w.dim() != 4:
        raise ValueError(f"plot_kernels needs a 2-D convolution weight (out, in, kh, kw), got shape {tuple(w.shape)}")
    out_c, in_c = min(w.shape[0], max_out), min(w.shape[1], max_in)
    rgb = w.shape[1] == 3
    columns = 1 if rgb else in_c
    fig = new_figure(figsize=(0.9 * columns + 1.4, 0.9 * out_c + 0.8), dpi=100)

    axes = fig.subplots(out_c, columns, squeeze=False)
    limit = float(w[:out_c, :in_c].abs().max()) or 1.0
    image = None
    for o in range(out_c):
        for c in range(columns):
            ax = axes[o, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if rgb:  # one colour tile per output channel, the shared scale mapped to [0, 1]
                ax.imshow(((w[o].permute(1, 2, 0) / limit + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
            else:
                image = ax.imshow(w[o, c].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(f"out {o}", fontsize=7)
            if o == 0 and not rgb:
                ax.set_title(f"in {c}", fontsize=7)
    shown = f" (first {out_c} of {w.shape[0]} out, {in_c} of {w.shape[1]} in)" if (out_c, in_c) != tuple(w.shape[:2]) else ""
    fig.suptitle((title or "kernels") + shown + (" — RGB, shared scale" if rgb else ""), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label="weight")
    if path is not None:
        save_figure(fig, path, bbox_inches="tight")
    return fig


def plot_features(image: torch.Tensor, maps: dict[str, torch.Tensor], path: str | Path | None = None, title: str = "", max_maps: int = 16) -> Figure:
    """The input (left) and, one row per layer, up to ``max_maps`` of its feature maps (each scaled on its own)."""
    rows = len(maps)
    columns = 1 + min(max_maps, max((m.shape[0] for m in maps.values()), default=1))
    fig = new_figure(figsize=(1.1 * columns, 1.25 * rows + 0.6), dpi=100)

    axes = fig.subplots(rows, columns, squeeze=False)
    for r, (name, fmap) in enumerate(maps.items()):
        for c in range(columns):
            axes[r, c].axis("off")
        axes[r, 0].imshow(_image_for_display(image), cmap="gray")
        label = f"{name}\n{fmap.shape[0]}x{fmap.shape[1]}x{fmap.shape[2]}" if fmap.dim() == 3 else name
        axes[r, 0].set_title(label, fontsize=6)
        if fmap.dim() != 3:
            continue
        for c in range(min(max_maps, fmap.shape[0])):
            axes[r, c + 1].imshow(fmap[c].float().numpy(), cmap="viridis", interpolation="nearest")
            axes[r, c + 1].set_title(f"ch {c}", fontsize=6)
    height = 1.25 * rows + 0.6
    fig.suptitle(textwrap.fill(title or "feature maps", 110), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the title above the first row's labels
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_receptive(image: torch.Tensor, field: dict, path: str | Path | None = None, title: str = "") -> Figure:
    """The input with the (clipped) receptive field of one unit outlined, its centre marked."""
    from matplotlib.patches import Rectangle

    fig = new_figure(figsize=(4, 4.3), dpi=120)


    ax = fig.subplots()
    ax.imshow(_image_for_display(image), cmap="gray")
    (y0, y1), (x0, x1) = field["clipped"]
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=True, alpha=0.25, color="tab:orange"))
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, linewidth=2, color="tab:orange"))
    (uy0, uy1), (ux0, ux1) = field["unclipped"]
    ax.plot([(ux0 + ux1) / 2], [(uy0 + uy1) / 2], "+", color="red", markersize=12, markeredgewidth=2)
    ax.set_title(textwrap.fill(title or "receptive field", 48), fontsize=8)  # never clipped at the sides
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_attribution(image: torch.Tensor, attribution, path: str | Path | None = None, classes=None, title: str = "") -> Figure:
    """Why the model decided: the image, its Grad-CAM overlaid, and the input-gradient saliency.

    ``attribution`` is a :class:`cnnlab.analysis.attribution.Attribution`.
    """
    fig = new_figure(figsize=(9, 3.4), dpi=110)
    axes = fig.subplots(1, 3)
    shown = _image_for_display(image)
    cmap = "gray" if shown.ndim == 2 else None
    name = classes[attribution.target] if classes else str(attribution.target)
    share = float(attribution.probabilities[attribution.target])
    axes[0].imshow(shown, cmap=cmap)
    axes[0].set_title(f"input; class {name} ({share:.0%})", fontsize=8)
    axes[1].imshow(shown, cmap=cmap)
    cam = attribution.cam_upsampled
    axes[1].imshow((cam / (cam.max() + 1e-12)).numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    empty = " - zero everywhere: no positive evidence here" if float(cam.max()) == 0 else ""
    axes[1].set_title(f"Grad-CAM at {attribution.layer} ({attribution.cam.shape[0]}x{attribution.cam.shape[1]}){empty}", fontsize=8)
    axes[2].imshow(attribution.saliency.amax(0).numpy(), cmap="hot")
    axes[2].set_title("saliency |d logit / d pixel|", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(textwrap.fill(title or f"why {name}", 110), fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_top_patches(images: torch.Tensor, patches: dict, path: str | Path | None = None, channels=None, title: str = "") -> Figure:
    """What each channel responds to: per row a channel, its top images' patches (the receptive field
    of the most active unit), strongest first, with the activation; a dashed frame marks a patch the
    image border cut. ``images`` are the pictures in the order the pass saw them; ``patches`` is
    :func:`cnnlab.analysis.patches.top_patches`'s result."""
    channels = list(patches) if channels is None else list(channels)
    k = max(len(patches[c]) for c in channels)
    fig = new_figure(figsize=(1.05 * k + 0.8, 1.1 * len(channels) + 0.6), dpi=100)
    axes = fig.subplots(len(channels), k, squeeze=False)
    for r, ch in enumerate(channels):
        for col in range(k):
            ax = axes[r, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(patches[ch]):
                ax.axis("off")
                continue
            p = patches[ch][col]
            (r0, r1), (c0, c1) = p.rectangle
            crop = images[p.image][:, r0 : r1 + 1, c0 : c1 + 1]
            shown = _image_for_display(crop)
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
            ax.set_title(f"{p.activation:.2f}", fontsize=6)
            if p.clipped:
                for spine in ax.spines.values():
                    spine.set_linestyle("--")
                    spine.set_color("tab:orange")
            if col == 0:
                ax.set_ylabel(f"ch {ch}", fontsize=7)
    fig.suptitle(textwrap.fill(title or "top patches per channel", 110), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (1.1 * len(channels) + 0.6)))
    if path is not None:
        save_figure(fig, path)
    return fig

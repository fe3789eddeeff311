"""What a channel responds to (Zeiler & Fergus, 2014): for each channel of a convolution or pooling
layer, the k test images that excite it most, and in each the input patch under the receptive
field of its most active unit (the exact rectangle of ``receptive_field_for_unit``, clipped at the
border and flagged where it was).

One pass over the data, batched, with bounded memory: only a running top-k per channel is kept
(``C x k`` values), never the activations of the whole data set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .receptive import Field
from .summary import receptive_field_for_unit

__all__ = ["TopPatch", "top_patches"]


@dataclass
class TopPatch:
    image: int  # index of the image in the order the batches gave them
    activation: float  # the channel's largest value in that image
    unit: tuple[int, int]  # where in the layer's map
    rectangle: tuple[tuple[int, int], tuple[int, int]]  # ((row0, row1), (col0, col1)) in the input, inclusive, clipped
    clipped: bool  # the receptive field reached past the image border


@torch.no_grad()
def top_patches(model: nn.Module, batches: Iterable, layer: str, k: int = 9) -> dict[int, list[TopPatch]]:
    """For every channel of ``layer``: its top-``k`` images, sorted by activation, with their patches.

    Args:
        model: any model; put in eval mode for the pass.
        batches: an iterable of ``x`` (N, C, H, W) or of tuples whose first item is ``x``
            (a DataLoader, or ``Batches.epoch(0)``).
        layer: a convolution or pooling layer's name.
        k: images per channel.
    """
    modules = dict(model.named_modules())
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    choices = [n for n, m in modules.items() if isinstance(m, kinds)]
    if layer not in choices:
        raise ValueError(f"no convolution or pooling layer named {layer!r}; choose one of: {', '.join(choices) or '(none)'}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    seen: dict[str, torch.Tensor] = {}
    hook = modules[layer].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    was = model.training
    model.eval()
    best_values = best_images = best_units = None  # (C, k) running top-k
    offset, input_size = 0, None
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            input_size = input_size or tuple(x.shape[1:])
            model(x)
            out = seen["out"].float()  # (N, C, h, w)
            n, c, h, w = out.shape
            flat = out.reshape(n, c, h * w)
            values, where = flat.max(-1)  # (N, C): each image's strongest unit per channel
            images = torch.arange(offset, offset + n, device=values.device)[:, None].expand(n, c)
            cand_v, cand_i, cand_u = values.T, images.T, where.T  # (C, N)
            if best_values is not None:
                cand_v = torch.cat([best_values, cand_v], 1)
                cand_i = torch.cat([best_images, cand_i], 1)
                cand_u = torch.cat([best_units, cand_u], 1)
            top = cand_v.topk(min(k, cand_v.shape[1]), dim=1)
            best_values, best_images, best_units = top.values, cand_i.gather(1, top.indices), cand_u.gather(1, top.indices)
            offset += n
    finally:
        hook.remove()
        model.train(was)
    if best_values is None:
        raise ValueError("top_patches: the batches were empty")
    field = receptive_field_for_unit(model, input_size, layer, (0, 0))
    geometry = Field(tuple(field.get("size", (input_size[1], input_size[2]))), tuple(field.get("jump", (1, 1))),
                     tuple(field.get("start", (0, 0))))
    result: dict[int, list[TopPatch]] = {}
    for ch in range(best_values.shape[0]):
        patches = []
        for v, img, u in zip(best_values[ch].tolist(), best_images[ch].tolist(), best_units[ch].tolist()):
            unit = divmod(int(u), w)
            unclipped, clipped = geometry.rectangle(unit, input_size[1:])
            if field.get("whole"):
                clipped = [(0, input_size[1] - 1), (0, input_size[2] - 1)]
                unclipped = [(0.0, float(input_size[1] - 1)), (0.0, float(input_size[2] - 1))]
            cut = any(lo < 0 or hi > n_ - 1 for (lo, hi), n_ in zip(unclipped, input_size[1:]))
            patches.append(TopPatch(int(img), float(v), unit, (tuple(clipped[0]), tuple(clipped[1])), cut))
        result[ch] = patches
    return result

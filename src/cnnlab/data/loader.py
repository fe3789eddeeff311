"""Batches straight from in-memory uint8 tensors: shuffled, sharded, resized, augmented and
normalised on whole batches with tensor operations (no per-sample Python in the hot loop).

Every random choice is derived from ``(seed, epoch, step)``: the epoch's permutation from
``(seed, epoch)`` and each batch's crops and flips from ``(seed, epoch, step)``. So an epoch can
be restarted at any step with exactly the batches an uninterrupted run would have seen, and
every process of a distributed run agrees on the global batch before taking its own part.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["Batches", "preprocess", "step_generator", "step_seed"]


def step_seed(seed: int, epoch: int, step: int = -1) -> int:
    """A seed derived from (seed, epoch, step), distinct for every triple of small non-negative ints."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + step + 1) % (2**63)


def step_generator(seed: int, epoch: int, step: int = -1) -> torch.Generator:
    """A CPU generator seeded by :func:`step_seed`."""
    return torch.Generator().manual_seed(step_seed(seed, epoch, step))


def preprocess(images: torch.Tensor, mean, std, normalize: bool, image_size: int | None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, S, S): scale to [0, 1], resize (bilinear), optionally normalise."""
    x = images.float().div_(255)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=image_size < x.shape[-1])
    if normalize:
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x


def augment(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, one draw per image, on the whole batch."""
    b, c, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(mask, x.flip(-1), x)
    return x


class Batches:
    """Iterate over (inputs, labels) batches of an in-memory split.

    Args:
        images: (N, C, H, W) uint8. labels: (N,) int64.
        batch_size: the *global* batch; with ``world_size > 1`` each process takes its share.
        shuffle: a new seeded permutation each epoch. augment_pad / flip: training augmentation.
        mean, std, normalize, image_size: see :func:`preprocess`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 mean=(0.0,), std=(1.0,), normalize: bool = False, image_size: int | None = None, augment_pad: int = 0,
                 flip: bool = False, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 channels_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.mean, self.std, self.normalize, self.image_size = mean, std, normalize, image_size
        self.augment_pad, self.flip = augment_pad, flip
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=step_generator(self.seed, epoch))

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """Yield ``(x, y, global_count)`` for steps ``start_step..``; x and y are this process's share."""
        order = self.order(epoch)
        for step in range(start_step, len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            global_count = len(index)
            index = torch.tensor_split(index, self.world_size)[self.rank].to(self.images.device)
            x = preprocess(self.images[index], self.mean, self.std, self.normalize, self.image_size)
            if self.augment_pad or self.flip:
                x = self._augment_share(x, epoch, step, global_count)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[index], global_count

    def _augment_share(self, x, epoch, step, global_count):
        # Draw for the whole global batch, then keep this process's rows: identical to one process.
        gen = step_generator(self.seed, epoch, step)
        if self.world_size == 1:
            return augment(x, gen, self.augment_pad, self.flip)
        sizes = [len(part) for part in torch.tensor_split(torch.arange(global_count), self.world_size)]
        start = sum(sizes[: self.rank])
        full = torch.zeros(global_count, *x.shape[1:], dtype=x.dtype, device=x.device)
        full[start : start + len(x)] = x
        return augment(full, gen, self.augment_pad, self.flip)[start : start + len(x)]

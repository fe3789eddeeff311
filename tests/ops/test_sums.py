"""Per-channel sums (batch norm's statistics, bias gradients) against torch's own sum in float64."""

from __future__ import annotations

import random

import torch

from cnnlab.ops.textbook.sums import FOLD_MAX_WIDTH, FOLD_MIN_VALUES, channel_sums, column_sums

from helpers import max_rel_error


def test_column_sums_match_torch_folded_or_not():
    rng = random.Random(7)
    folded = 0
    for i in range(40):
        c = rng.choice([1, 3, 4, 8, 12, 16, 24, 56, 112, 300])
        m = rng.choice([1, 7, 2048, 6272, 25088, FOLD_MIN_VALUES // c + rng.randint(0, 64)])
        rows = torch.randn(m, c, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        folded += m * c >= FOLD_MIN_VALUES and m % 2 == 0 and 2 * c <= FOLD_MAX_WIDTH
        assert max_rel_error(column_sums(rows), rows.sum(0)) < 1e-12, (m, c)
    assert folded >= 5  # the folded form is exercised, not only the plain sum


def test_channel_sums_in_every_layout():
    torch.manual_seed(0)
    for shape in [(64, 24), (16, 24, 28, 28), (4, 3, 5, 6, 7), (128, 12, 14, 14)]:
        t = torch.randn(shape, dtype=torch.float64)
        expected = t.sum([0, *range(2, t.dim())])
        layouts = [t, t.transpose(0, 1).contiguous().transpose(0, 1)]
        if t.dim() == 4:
            layouts.append(t.contiguous(memory_format=torch.channels_last))
        if t.dim() == 5:
            layouts.append(t.contiguous(memory_format=torch.channels_last_3d))
        for view in layouts:
            assert max_rel_error(channel_sums(view), expected) < 1e-12, (shape, view.stride())

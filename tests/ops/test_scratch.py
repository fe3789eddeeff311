"""Reused scratch memory: one buffer per slot, dtype and device; its views kept and handed out again."""

from __future__ import annotations

import threading

import torch

from cnnlab.ops.textbook import scratch as scratch_module
from cnnlab.ops.textbook.scratch import scratch


def test_a_slot_reuses_its_memory_and_its_views():
    like = torch.zeros(1)
    a = scratch("test.reuse", (4, 5), like)
    b = scratch("test.reuse", (4, 5), like)
    c = scratch("test.reuse", (2, 3), like)
    assert a is b  # the same view, not only the same memory
    assert c.data_ptr() == a.data_ptr() and c.shape == (2, 3) and c.is_contiguous()
    assert scratch("test.reuse", (4, 5), like, torch.float64).data_ptr() != a.data_ptr()  # a dtype has its own buffer


def test_growing_a_slot_drops_the_views_of_its_old_memory():
    like = torch.zeros(1)
    small = scratch("test.grow", (3, 2), like)
    large = scratch("test.grow", (100, 7), like)  # more than the buffer holds: new memory
    again = scratch("test.grow", (3, 2), like)
    assert again is not small and again.data_ptr() == large.data_ptr()
    again.fill_(1.0)
    assert large.flatten()[:6].eq(1.0).all()


def test_views_are_dropped_once_too_many_shapes_were_asked_for(monkeypatch):
    monkeypatch.setattr(scratch_module, "MAX_VIEWS", 3)
    like = torch.zeros(1)
    first = scratch("test.many", (5,), like)  # the largest first: the buffer never grows below
    for size in range(1, 5):
        scratch("test.many", (size,), like)
    assert len(scratch_module._local.views) <= 3
    again = scratch("test.many", (5,), like)
    assert again is not first and again.data_ptr() == first.data_ptr()  # made again, on the same memory


def test_threads_have_their_own_buffers():
    like = torch.zeros(1)
    here = scratch("test.thread", (8,), like)
    there = []
    thread = threading.Thread(target=lambda: there.append(scratch("test.thread", (8,), like)))
    thread.start()
    thread.join()
    assert there[0].data_ptr() != here.data_ptr()


def test_memory_first_asked_for_under_inference_mode_is_writable_outside_it():
    """A slot made inside ``torch.inference_mode()`` (a model evaluated that way before training) is a
    normal tensor: writing it in place outside inference mode, and inside again, works."""
    like = torch.zeros(1)
    with torch.inference_mode():
        inside = scratch("test.inference", (3, 3), like).fill_(1.0)
    assert not inside.is_inference()
    scratch("test.inference", (3, 3), like).add_(1.0)  # raised "Inplace update to inference tensor" before
    with torch.inference_mode():
        assert scratch("test.inference", (3, 3), like).add_(1.0).eq(3.0).all()

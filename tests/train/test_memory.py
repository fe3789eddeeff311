"""The allocator setting fit() applies: glibc keeps freed blocks for the next training step."""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import subprocess
import sys

import pytest

from cnnlab.train import memory


def test_applied_on_linux_with_glibc_and_only_once(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)
    calls = []
    real = memory._mallopt
    monkeypatch.setattr(memory, "_mallopt", lambda p, v: calls.append((p, v)) or real(p, v))
    assert memory.keep_freed_memory() is True  # this project's machines run glibc
    assert memory.keep_freed_memory() is True
    assert calls == [(memory._M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD), (memory._M_TRIM_THRESHOLD, memory.TRIM_THRESHOLD)]


def test_the_environment_can_turn_it_off(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_mallopt", lambda p, v: pytest.fail("mallopt called"))
    monkeypatch.setenv("CNNLAB_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False


def test_nothing_happens_without_glibc(monkeypatch):
    monkeypatch.setattr(memory, "_applied", None)

    def no_libc(*args, **kwargs):
        raise OSError("no libc here")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False


def test_training_steps_stop_mapping_fresh_pages():
    """Ten training steps of lenet-modern (batch 64) in fresh processes: without the setting glibc maps
    tens of thousands of pages in again (43,512-56,492 minor page faults measured over 10 steps, four
    processes, in an earlier round; 16,877-39,540 over eight processes on this round's machine), with it
    almost none (8-3,144 over nine processes; 8-1,920 over eight now); the test asks for 5x fewer, comparing
    the median of three processes each (one process each once read 7,322 against 1,578 in a full suite run)."""

    def faults(keep: bool) -> int:
        code = f"""
import resource, torch, torch.nn.functional as F
from cnnlab.models import create_model
from cnnlab.train.memory import keep_freed_memory
if {keep}:
    assert keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(2)
model = create_model("lenet-modern").to(memory_format=torch.channels_last)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
        env = {k: v for k, v in os.environ.items() if k != "CNNLAB_KEEP_FREED_MEMORY" and not k.startswith("MALLOC_")}
        return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # each process counts its own faults: two at a time
        counts = list(pool.map(faults, [False, True] * 3))
    default, kept = sorted(counts[0::2])[1], sorted(counts[1::2])[1]
    assert default > 5_000 and kept * 5 < default, (kept, default)

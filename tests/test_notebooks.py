"""The chapter as notebooks, run top to bottom in a real Jupyter kernel (nbclient) on the fixture data;
and what a notebook user sees: one live figure updated in place, HTML tables, inline figures."""

from __future__ import annotations

import os
import queue
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def notebook_env(monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(FIXTURES))
    monkeypatch.setenv("CNNLAB_EPOCHS", "2")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")


def test_there_are_four_notebooks_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01-convolutions.ipynb", "02-lenet.ipynb", "03-modern-cnns.ipynb", "04-inside.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{path.name} is stored with outputs"
                assert "assert" in cell.source or "import" in cell.source or cell.source.strip().endswith(("run", "fig", "page.stop()")), \
                    f"{path.name}: a code cell that checks nothing:\n{cell.source}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_in_a_real_kernel(path, tmp_path, notebook_env):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on any error or failed assert
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if path.stem == "02-lenet":
        html = [o for o in outputs if "text/html" in o.get("data", {}) and "cnnlab-summary" in o["data"]["text/html"]]
        assert html and "<table>" in html[0]["data"]["text/html"] and "61,706" in html[0]["data"]["text/html"]
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= 2  # the live figure (its last state) and run.plot_curves()
    if path.stem == "04-inside":
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # kernels, feature maps, receptive field
        assert any("<iframe" in o.get("data", {}).get("text/html", "") for o in outputs)


LIVE = """
import os, torch, cnnlab
net = torch.nn.Sequential(cnnlab.nn.Conv2d(1, 4, 5, padding=2), torch.nn.ReLU(), cnnlab.nn.MaxPool2d(2), torch.nn.Flatten(),
                          torch.nn.Linear(4 * 14 * 14, 10))
result = cnnlab.fit(net, "fashion-mnist", data_dir=os.environ["CNNLAB_DATA_DIR"], epochs=3, lr=0.1, batch_size=32,
                    out=os.path.join({tmp!r}, "live"))
"""


def _messages(code: str, timeout: float = 300) -> list[dict]:
    """Run ``code`` in a fresh kernel; every iopub message until the kernel is idle again."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        msg_id = client.execute(code)
        seen = []
        while True:
            try:
                msg = client.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                raise AssertionError("the kernel went quiet") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return seen
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_the_live_figure_is_one_display_updated_in_place(tmp_path, notebook_env):
    messages = _messages(LIVE.format(tmp=str(tmp_path)))
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors
    figures = [m for m in messages if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]
    assert len(figures) == 1, "the figure must be displayed once, then updated"
    figure_id = figures[0]["content"]["transient"]["display_id"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == figure_id]
    assert len(updates) >= 3  # at least once per epoch (3 epochs), a few times per epoch in fact
    assert all("image/png" in m["content"]["data"] for m in updates)
    bars = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data") and "text/html" in m["content"]["data"]
            and "<progress" in m["content"]["data"]["text/html"]]
    assert bars, "a progress bar renders in the notebook"
    printed = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert "training Sequential" in printed and "done: test accuracy" in printed


def test_quiet_silences_bar_and_figure(tmp_path, notebook_env):
    messages = _messages(LIVE.format(tmp=str(tmp_path)).replace("out=", "quiet=True, out="))
    assert not [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert not [m for m in messages if m["msg_type"] == "error"]

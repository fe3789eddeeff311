"""What watches training: one small interface, a terminal reporter and a Jupyter reporter.

``fit`` calls, on rank 0 only:

    start(run)                         once, before the first step (``run.folder``, ``run.config`` ...)
    epoch_start(epoch, total, first)   before each epoch's first step
    step(epoch, step, sums)            after every step; sums = [loss, correct, count, seconds]
    epoch_end(row)                     after each epoch's evaluation (the metrics.csv row)
    say(text)                          a line for the user
    end(history)                       after the last epoch

A reporter implements any of them (:class:`Reporter` has them all as no-ops); pass your own
with ``fit(..., reporters=[...])``.

- :class:`TerminalReporter`: epoch lines (or JSON lines) on stdout, a tqdm bar on a terminal:
  what ``cnnlab train`` prints.
- :class:`NotebookReporter`: in Jupyter, a progress bar (tqdm's notebook bar when ipywidgets is
  installed, else an HTML bar) and one live figure of loss and train/test accuracy, like the
  book's ``Animator``, updated in place (one display, ``update_display_data``) a few times per
  epoch, with the numbers and the elapsed time in its title.
"""

from __future__ import annotations

import json
import sys
import time

__all__ = ["NotebookReporter", "Reporter", "TerminalReporter", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not a plain script)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class Reporter:
    def start(self, run) -> None: ...
    def epoch_start(self, epoch: int, total: int, first: int) -> None: ...
    def step(self, epoch: int, step: int, sums: list[float]) -> None: ...
    def epoch_end(self, row: dict) -> None: ...
    def say(self, text: str) -> None: ...
    def end(self, history: list[dict]) -> None: ...


class TerminalReporter(Reporter):
    """Epoch lines (or JSON lines) on stdout; a tqdm bar when stderr is a terminal."""

    def __init__(self, quiet: bool = False, json_lines: bool = False):
        self.quiet, self.json, self.bar, self.epochs = quiet, json_lines, None, 0

    def start(self, run) -> None:
        self.epochs = run.config.epochs

    def epoch_start(self, epoch: int, total: int, first: int) -> None:
        from tqdm import tqdm

        show = not self.quiet and not self.json and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=first, desc=f"epoch {epoch}/{self.epochs}", leave=False, disable=not show,
                        dynamic_ncols=True)

    def step(self, epoch: int, step: int, sums: list[float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}", acc=f"{sums[1] / max(sums[2], 1):.3f}", refresh=False)

    def epoch_end(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.json:
            print(json.dumps({"event": "epoch", **row}), flush=True)
        else:
            print(f"epoch {row['epoch']:>3}/{self.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_acc']:.3f}  "
                  f"test acc {row['test_acc']:.3f}  {row['examples_per_s']:,.0f} ex/s  {row['elapsed_s']:.1f} s", flush=True)

    def say(self, text: str) -> None:
        if not self.json:
            print(text, flush=True)

    def summary(self, row: dict) -> None:
        if self.json:
            print(json.dumps(row), flush=True)

    def end(self, history: list[dict]) -> None:
        if self.bar is not None:
            self.bar.close()


class NotebookReporter(Reporter):
    """A progress bar and one live figure in Jupyter, updated in place."""

    def __init__(self, updates_per_epoch: int = 4):
        self.updates = max(1, updates_per_epoch)
        self.points: list[tuple[float, float, float]] = []  # (epoch position, train loss, train acc) so far
        self.rows: list[dict] = []
        self.handle = self.bar = None

    def start(self, run) -> None:
        from IPython.display import display

        self.epochs, self.title = run.config.epochs, f"{run.model_name} on {run.inputs.name}"
        self.rows = [dict(r) for r in run.history]
        self.points = [(r["epoch"], r["train_loss"], r["train_acc"]) for r in self.rows]
        self.started = time.perf_counter() - (self.rows[-1]["elapsed_s"] if self.rows else 0.0)
        self.handle = display(self._figure(), display_id=True)

    def epoch_start(self, epoch: int, total: int, first: int) -> None:
        self.total, self.epoch = total, epoch
        self.marks = {round(total * k / self.updates) for k in range(1, self.updates)}
        self.bar = _notebook_bar(total, first, f"epoch {epoch}/{self.epochs}")

    def step(self, epoch: int, step: int, sums: list[float]) -> None:
        self.bar.update(1, sums)
        if step + 1 in self.marks and sums[2]:
            self.points.append((epoch - 1 + (step + 1) / self.total, sums[0] / sums[2], sums[1] / sums[2]))
            self.handle.update(self._figure())

    def epoch_end(self, row: dict) -> None:
        self.bar.close()
        self.rows.append(row)
        self.points.append((row["epoch"], row["train_loss"], row["train_acc"]))
        self.handle.update(self._figure())

    def say(self, text: str) -> None:
        print(text, flush=True)

    def _figure(self):
        from ..viz.plots import new_figure

        fig = new_figure(figsize=(6, 3.6), dpi=100)
        ax = fig.subplots()
        if self.points:
            xs = [p[0] for p in self.points]
            ax.plot(xs, [p[1] for p in self.points], "-", color="tab:blue", label="train loss")
            ax.plot(xs, [p[2] for p in self.points], "--", color="tab:purple", label="train acc")
        if self.rows:
            ax.plot([r["epoch"] for r in self.rows], [r["test_acc"] for r in self.rows], "-.^", color="tab:green", label="test acc")
        ax.set_xlim(0, max(self.epochs, 1))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if self.points or self.rows:
            ax.legend(loc="center right", fontsize=8)
        elapsed = time.perf_counter() - self.started
        if self.rows:
            last = self.rows[-1]
            numbers = (f"epoch {last['epoch']}/{self.epochs}: loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                       f"test acc {last['test_acc']:.3f}, {last['examples_per_s']:,.0f} ex/s, {elapsed:.0f} s")
        else:
            numbers = f"starting, {elapsed:.0f} s"
        ax.set_title(f"{self.title}\n{numbers}", fontsize=9)
        fig.tight_layout()
        return fig


def _notebook_bar(total: int, first: int, desc: str):
    try:
        import ipywidgets  # noqa: F401  (tqdm's notebook bar needs it)
        from tqdm.notebook import tqdm
    except ImportError:
        return _HtmlBar(total, first, desc)
    return _TqdmBar(tqdm(total=total, initial=first, desc=desc, leave=False))


class _TqdmBar:
    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int, sums: list[float]) -> None:
        self.bar.update(n)
        self.bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}", acc=f"{sums[1] / max(sums[2], 1):.3f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


class _HtmlBar:
    """A progress bar as one HTML display updated in place (no ipywidgets needed)."""

    def __init__(self, total: int, first: int, desc: str):
        from IPython.display import HTML, display

        self.total, self.done, self.desc, self.shown = total, first, desc, time.perf_counter()
        self.handle = display(HTML(self._html("")), display_id=True)

    def _html(self, extra: str) -> str:
        share = self.done / max(self.total, 1)
        return (f"<div style='font-family:monospace'>{self.desc} <progress value='{self.done}' max='{self.total}'></progress> "
                f"{self.done}/{self.total} ({share:.0%}) {extra}</div>")

    def update(self, n: int, sums: list[float]) -> None:
        from IPython.display import HTML

        self.done += n
        if time.perf_counter() - self.shown > 0.25 or self.done == self.total:  # at most 4 redraws a second
            self.shown = time.perf_counter()
            self.handle.update(HTML(self._html(f"loss {sums[0] / max(sums[2], 1):.4f}, acc {sums[1] / max(sums[2], 1):.3f}")))

    def close(self) -> None:
        pass

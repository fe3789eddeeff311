"""Nothing lost: run folders are never overwritten, one process writes a run, failed writes are explained
and harmless, files follow the umask, and a run killed at random moments resumes bit-identically."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab import files
from cnnlab.files import WriteError
from cnnlab.train import TrainingError, fit, resolve_config
from cnnlab.train.checkpoint import load_checkpoint, load_weights

import procs

FIXTURES = Path(__file__).parent.parent / "fixtures"
QUICK = {"dataset": "fashion-mnist", "data_dir": str(FIXTURES), "batch_size": 32, "eval_batch_size": 64}
SRC = str(Path(__file__).parents[2] / "src")


def train(out: Path | None, overwrite: bool = False, **kw):
    config = resolve_config(kw.pop("model", "lenet"), **{**QUICK, "out": str(out) if out else None, **kw})
    return fit(config, overwrite=overwrite, quiet=True)


def cnnlab(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return procs.run("-m", "cnnlab", *args, cwd=cwd, env={**os.environ, **(env or {})})


def quick_args(out: Path | None, epochs: int = 1) -> list[str]:
    return ["train", "lenet", "--data-dir", str(FIXTURES), "--batch-size", "32", "--eval-batch-size", "64", "--epochs",
            str(epochs), "--quiet", *(["--out", str(out)] if out else [])]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


# -- 1) never overwrite a run ----------------------------------------------------------------------------------------


def test_a_folder_holding_a_run_is_refused_and_left_untouched(tmp_path):
    first = train(tmp_path / "run", epochs=1, model="lenet-modern")
    before = digest(first.folder)
    with pytest.raises(ValueError, match=r"already holds a lenet-modern run on fashion-mnist \(1 epoch\(s\) done\); continue it with: "
                                         r"cnnlab train --resume .*run; or choose another --out; or replace it with --overwrite"):
        train(tmp_path / "run", epochs=1)
    result = cnnlab(*quick_args(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.startswith("cnnlab: error: --out") and "Traceback" not in result.stderr
    assert "--resume" in result.stderr and "--overwrite" in result.stderr
    assert digest(first.folder) == before


def test_overwrite_replaces_a_run_but_never_other_files(tmp_path):
    train(tmp_path / "run", epochs=1, model="lenet-modern")
    replaced = train(tmp_path / "run", overwrite=True, epochs=1)
    assert load_weights(replaced.folder)[1]["model"] == "lenet"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=r"--out .*mine is not empty \(it holds files thesis.tex\)"):
            train(mine, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty, epochs=1).folder == empty  # an empty folder is fine


def test_a_file_where_the_folder_should_be_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = cnnlab(*quick_args(tmp_path / "afile"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"cnnlab: error: --out {tmp_path / 'afile'}: it is a file, not a folder; give a new folder name"
    result = cnnlab(*quick_args(tmp_path / "afile" / "run"))
    assert result.returncode == 2 and f"({tmp_path / 'afile'} is a file)" in result.stderr


# -- 2) unique default folders -----------------------------------------------------------------------------------------


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "cnnlab", *quick_args(None)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
             for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3, folders
    for folder in folders:
        assert load_checkpoint(folder)["epoch"] == 2
        assert folder.name.startswith("lenet-fashion-mnist-")
    # the folder each printed is its own
    printed = {line.rsplit("-> ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("training ")}
    assert printed == {str(Path("runs") / f.name) for f in folders}


# -- 3) one writer per run folder ---------------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from cnnlab.train.runfolder import RunFolder
folder = Path(sys.argv[1])
held = RunFolder.claim_existing(folder) if sys.argv[2] == "existing" else RunFolder.claim_new(folder)
print("HELD", flush=True)
time.sleep(120)
"""


def _hold(folder: Path, how: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), how], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "HELD"
    return proc


def test_a_folder_in_use_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    run = train(tmp_path / "run", epochs=1).folder
    holder = _hold(run, "existing")
    try:
        result = cnnlab("train", "--resume", str(run), "--epochs", "2", "--quiet")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"run folder {run} is in use by another cnnlab process (pid {holder.pid})" in result.stderr
        with pytest.raises(ValueError, match="is in use by another cnnlab process"):
            fit(resume=run, epochs=2, quiet=True)
        assert load_checkpoint(run)["epoch"] == 2  # untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert fit(resume=run, epochs=2, quiet=True).final["epoch"] == 2  # the dead holder's lock went with it

    fresh = tmp_path / "fresh"
    holder = _hold(fresh, "new")
    try:
        result = cnnlab(*quick_args(fresh))
        assert result.returncode == 2 and f"(pid {holder.pid})" in result.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train(fresh, epochs=1).final["epoch"] == 1


# -- 4) every failed write is explained and harmless --------------------------------------------------------------------


def _fail_writes_to(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    original = files._write_all

    def failing(fd, blob):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.startswith(f".{name}."):
            original(fd, blob[: len(blob) // 3])  # part of it reaches the disk, as when space runs out
            raise OSError(code, os.strerror(code))
        original(fd, blob)

    monkeypatch.setattr(files, "_write_all", failing)


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.safetensors", "metrics.csv", "config.json"])
def test_a_failed_write_names_the_file_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, name):
    run = train(tmp_path / "run", epochs=1).folder
    before = digest(run)
    _fail_writes_to(monkeypatch, name)
    with pytest.raises(WriteError) as caught:
        fit(resume=run, epochs=2, quiet=True)
    message = str(caught.value)
    assert message.startswith(f"could not write {run / name}: No space left on device [ENOSPC]; ")
    assert "continue with: cnnlab train --resume" in message
    monkeypatch.undo()
    state = load_checkpoint(run)  # loadable, and still a whole checkpoint
    assert state["epoch"] in (2, 3) and load_weights(run)[1]["model"] == "lenet"
    if name != "config.json":  # the checkpoint is written last: a failure before or at it keeps epoch 1's
        assert state["epoch"] == 2 and "(end of epoch 1)" in message
    else:  # the first write of a resumed run: nothing changed at all
        assert digest(run) == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers
    assert fit(resume=run, epochs=2, quiet=True).final["epoch"] == 2  # and the run goes on once space is back


@pytest.mark.parametrize("name", ["curves.png", "predictions.png", "confusion.png"])
def test_a_failed_figure_write_keeps_the_trained_run(tmp_path, monkeypatch, name):
    _fail_writes_to(monkeypatch, name, errno.EACCES)
    with pytest.raises(WriteError, match=rf"could not write .*{name}: Permission denied \[EACCES\]; the last good checkpoint "
                                         r"\(end of epoch 1\) and weights in .* are intact"):
        train(tmp_path / "run", epochs=1)
    assert load_checkpoint(tmp_path / "run")["epoch"] == 2


def test_a_failure_before_the_first_checkpoint_leaves_no_half_made_folder(tmp_path, monkeypatch):
    _fail_writes_to(monkeypatch, "checkpoint.pt")
    with pytest.raises(WriteError, match=r"checkpoint.pt: No space left on device \[ENOSPC\]; nothing was saved \(the run folder .* was removed\)"):
        train(tmp_path / "new", epochs=1)
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch 1, step \d+; stopped. No checkpoint had been written "
                                            r"yet; nothing was saved \(the run folder .* was removed\)"):
        train(tmp_path / "nan", epochs=1, lr=1e38)
    assert not (tmp_path / "nan").exists()


@pytest.fixture
def tmpfs(tmp_path):
    """A real, small file system (tmpfs) the test can fill up or make read-only; needs root and mount."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated failures above cover each write")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_and_a_read_only_folder_for_real(tmpfs):
    run = tmpfs / "run"
    first = cnnlab(*quick_args(run))
    assert first.returncode == 0, first.stderr
    before = digest(run)
    # fill the file system: the next epoch's checkpoint does not fit
    with open(tmpfs / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    full = cnnlab("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert f"could not write {run}/" in full.stderr and "No space left on device [ENOSPC]" in full.stderr
    assert load_checkpoint(run)["epoch"] == 2 and load_weights(run)[1]["model"] == "lenet"
    assert {k: v for k, v in digest(run).items() if k != "config.json"} == {k: v for k, v in before.items() if k != "config.json"}
    (tmpfs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    ro = cnnlab("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert ro.returncode == 1 and "Read-only file system [EROFS]" in ro.stderr and "Traceback" not in ro.stderr, ro.stderr
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    again = cnnlab("train", "--resume", str(run), "--epochs", "2", "--quiet")
    assert again.returncode == 0 and load_checkpoint(run)["epoch"] == 3


# -- 5) normal file permissions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_run_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = train(tmp_path / "run", epochs=1).folder
    finally:
        os.umask(old)
    for path in folder.iterdir():
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


# -- 6) the kill soak ---------------------------------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import cnnlab.files as files
import cnnlab.train.loop as loop
kind, at = sys.argv[1], int(sys.argv[2])
count = {"step": 0, "write": 0}
def die():
    os.kill(os.getpid(), signal.SIGKILL)
original_seed, original_write = loop.step_seed, files._write_all
def step_seed(*args):
    count["step"] += 1
    if kind == "step" and count["step"] == at:
        die()
    return original_seed(*args)
def write_all(fd, blob):
    count["write"] += 1
    if kind == "write" and count["write"] == at:
        original_write(fd, blob[: len(blob) // 2])  # half a file on disk, then gone
        os.fsync(fd)
        die()
    original_write(fd, blob)
loop.step_seed, files._write_all = step_seed, write_all
from cnnlab.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_kill_soak_twenty_random_kills_all_resume_bit_identical(tmp_path):
    epochs, steps = 3, 19  # 600 fixture images in batches of 32
    reference = train(tmp_path / "reference", epochs=epochs).folder
    ref_weights, ref_state = load_weights(reference)[0], load_checkpoint(reference)
    writes = 1 + 3 * epochs + 3  # config.json, (weights, metrics, checkpoint) per epoch, three figures
    moments = [("step", s) for s in range(1, epochs * steps + 1)] + [("write", w) for w in range(1, writes + 1)]
    chosen = random.Random(20261124).sample(moments, 20)

    def killed(n: int, kind: str, at: int) -> subprocess.CompletedProcess:  # each kill lands at its own step or write
        return procs.run("-c", KILLER, kind, str(at), *quick_args(tmp_path / f"killed-{n}", epochs))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two runs at a time: the moments do not depend on timing
        children = list(pool.map(killed, range(len(chosen)), *zip(*chosen)))
    survived = []
    for n, ((kind, at), proc) in enumerate(zip(chosen, children)):
        out = tmp_path / f"killed-{n}"
        assert proc.returncode == -signal.SIGKILL, (kind, at, proc.stderr)
        if not (out / "checkpoint.pt").exists():  # killed before the first checkpoint: the same --out starts again
            with pytest.raises(ValueError, match="stopped before its first checkpoint; there is nothing to resume"):
                fit(resume=out, quiet=True)
            train(out, epochs=epochs)
        elif load_checkpoint(out)["epoch"] <= epochs:  # else killed while drawing the figures: training was complete
            fit(resume=out, quiet=True)
        weights, state = load_weights(out)[0], load_checkpoint(out)
        same = all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights) and \
            [{k: r[k] for k in ("train_loss", "train_acc", "test_acc", "lr")} for r in state["history"]] == \
            [{k: r[k] for k in ("train_loss", "train_acc", "test_acc", "lr")} for r in ref_state["history"]]
        survived.append(same)
    print(f"kill soak: {sum(survived)}/{len(chosen)} kills resumed bit-identical; moments {chosen}")
    assert all(survived), [c for c, ok in zip(chosen, survived) if not ok]

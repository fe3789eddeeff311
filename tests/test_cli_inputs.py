"""Every command checks its inputs before it starts, answers in one line, and leaves nothing half-made.

The walk runs ``cnnlab.cli.main`` in this process with bad arguments for every command and fails on
any traceback (an uncaught exception fails the test by itself) or on an answer that is not one
``cnnlab: error:`` line (argparse's usage errors too: one line, pointing at --help).
"""

from __future__ import annotations

import json
import socket
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.cli import build_parser, main
from cnnlab.train import fit, resolve_config

import procs

FIXTURES = Path(__file__).parent / "fixtures"
SRC = str(Path(__file__).parents[1] / "src")
QUICK = ["--data-dir", str(FIXTURES), "--batch-size", "32", "--eval-batch-size", "64", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lenet"
    return fit(resolve_config("lenet", dataset="fashion-mnist", data_dir=str(FIXTURES), epochs=2, batch_size=32, out=str(out)),
               quiet=True).folder


@pytest.fixture(scope="module")
def places(tmp_path_factory, run):
    """Files and folders the bad cases point at."""
    root = tmp_path_factory.mktemp("places")
    (root / "afile").write_text("not a folder")
    one = root / "one-per-class"
    empty = root / "empty-classes"
    for name in ("a", "b"):
        (one / name).mkdir(parents=True)
        Image.new("L", (8, 8), 60 if name == "a" else 200).save(one / name / "x.png")
        (empty / name).mkdir(parents=True)
    corrupt = root / "corrupt"
    corrupt.mkdir()
    for name in ("config.json", "model.safetensors"):
        (corrupt / name).write_bytes((run / name).read_bytes())
    (corrupt / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:5000])
    (root / "mymods.py").write_text(
        "import torch.nn as nn\n\n"
        "def small():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n\n"
        "class Net(nn.Module):\n    def __init__(self, width=4):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, width, 3)\n\n    def forward(self, x):\n        return self.conv(x)\n\n"
        "def returns_int():\n    return 3\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    yield {"root": root, "afile": root / "afile", "one": one, "empty": empty, "corrupt": corrupt, "busy": busy.getsockname()[1]}
    busy.close()


def answer(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


BAD = [
    # (argv with placeholders, exit code, what the one line must say)
    (["train", "lenet", "--out", "{afile}"], 2, "--out {afile}: it is a file, not a folder"),
    (["train", "vgg11", "--image-size", "64", "--out", "{new}", *QUICK], 2, "vgg11 cannot take 1x64x64 inputs"),
    (["train", "lenet", "--image-size", "8", "--out", "{new}", *QUICK], 2, "lenet cannot take 1x8x8 inputs (--image-size or the data's channels): input size (1, 8, 8) does not fit the model: layer '3'"),
    (["train", "--lr", "inf", "--out", "{new}"], 2, "lr must be a finite number, got inf"),
    (["train", "--nproc", "0"], 2, "--nproc must be >= 1, got 0"),
    (["train", "--threads", "0", "--out", "{new}"], 2, "threads must be >= 1, got 0"),
    (["train", "--dataset", "folder:{one}", "--out", "{new}", *QUICK], 2, "no test images (a class needs at least 2 images"),
    (["train", "--dataset", "folder:{empty}", "--out", "{new}", *QUICK], 2, "these hold none: a, b"),
    (["train", "--subset", "3", "--out", "{new}", *QUICK], 2,
     "subset 3 is too small: fashion-mnist has 10 classes, and a subset gives each class at least one training and one test "
     "image, so it needs at least 10 (with 3 training images the test part would get 1); use a subset of 10 or more"),
    (["train", "resnet18", "--resume", "{run}"], 2, "cannot change model='lenet' (asked 'resnet18')"),
    (["train", "--resume", "{run}", "--epochs", "1"], 2, "--epochs 1: {run} has already trained 2 epoch(s)"),
    (["train", "--resume", "{run}"], 2, "{run} is complete (2 of 2 epochs); pass --epochs N with N > 2"),
    (["train", "--resume", "{corrupt}", "--epochs", "3"], 2, "checkpoint.pt is corrupt or not a cnnlab checkpoint"),
    (["train", "--resume", "{root}/nowhere"], 2, "--resume {root}/nowhere: does not exist"),
    (["train", "--resume", "{run}", "--overwrite"], 2, "--resume and --overwrite exclude each other"),
    (["evaluate", "{root}/nowhere"], 1, "no such weights file"),
    (["predict", "{run}", "{afile}", "--top", "0"], 2, "--top must be >= 1, got 0"),
    (["predict", "{run}", "{afile}", "--top", "-1"], 2, "--top must be >= 1, got -1"),
    (["summary", "nomod_anywhere:x", "--input", "3x32x32"], 2, "no module named 'nomod_anywhere' in the current folder"),
    (["summary", "mymods:missing", "--input", "3x32x32"], 2, "mymods has no attribute 'missing'; it defines: Net, nn, returns_int, small"),
    (["summary", "mymods:returns_int", "--input", "3x32x32"], 2, "'mymods:returns_int' returned an object of type int, not a torch.nn.Module"),
    (["summary", "mymods:Net", "--input", "3x32x32", "--model-args", "{{\"depth\": 3}}"], 2, "could not be called with --model-args {{\"depth\": 3}}"),
    (["summary", "mymods:Net", "--input", "3x32x32", "--model-args", "[1]"], 2, "--model-args must be a JSON object"),
    (["summary", "mymods:small"], 2, "--input is required for a module.path:factory model"),
    (["summary", "lenet", "--input", "1x4x4"], 2, "does not fit the model"),
    (["viz", "receptive", "{run}", "--layer", "3", "--unit", "4", "--test-index", "0", "--data-dir", str(FIXTURES)], 2,
     "--unit must be row,column (two whole numbers, e.g. 3,4), got '4'"),
    (["viz", "receptive", "{run}", "--layer", "7", "--unit", "0,0", "--test-index", "0", "--data-dir", str(FIXTURES)], 2,
     "layer '7' (Linear) has no spatial output"),
    (["viz", "receptive", "{run}", "--layer", "3", "--unit", "99,0", "--test-index", "0", "--data-dir", str(FIXTURES)], 2,
     "unit (99, 0) is outside layer '3''s output of spatial size 10x10"),
    (["viz", "kernels", "{run}", "--layer", "99"], 2, "--layer must name a convolution; choose one of: 0, 3"),
    (["viz", "features", "{run}", "--test-index", "100000", "--data-dir", str(FIXTURES)], 2, "--test-index must be in 0..199"),
    (["tour", "edges", "--out", "{afile}"], 2, "--out {afile} is a file"),
    (["explore", "{run}", "--port", "99999"], 2, "--port must be in 0..65535"),
    (["explore", "{run}", "--port", "{busy}"], 2, "cannot listen on 127.0.0.1:{busy}: Address already in use; choose another --port"),
    (["explore", "{run}", "--host", "no.such.host.invalid", "--port", "0"], 2, "--host 'no.such.host.invalid' is not an address"),
    (["data", "imagenet"], 2, "unknown data set 'imagenet'"),
]


@pytest.mark.parametrize(("argv", "code", "says"), BAD, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _, _) in enumerate(BAD)])
def test_every_command_answers_bad_input_in_one_line(capsys, monkeypatch, run, places, tmp_path, argv, code, says):
    monkeypatch.chdir(places["root"])  # mymods.py is importable from the current folder
    fill = {**{k: str(v) for k, v in places.items()}, "run": str(run), "new": str(tmp_path / "new")}
    argv = [a.format(**fill) for a in argv]
    got, out, err = answer(capsys, *argv)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab") and ": error: " in lines[0], err
    assert says.format(**fill) in lines[0]
    assert got == code, err
    assert not (tmp_path / "new").exists()  # nothing half-made


# -- module:factory as people expect ------------------------------------------------------------------------------------


def test_a_factory_from_the_current_folder_and_a_class_with_model_args(tmp_path, places):
    small = procs.run("-m", "cnnlab", "summary", "mymods:small", "--input", "3x32x32", cwd=places["root"])
    assert small.returncode == 0 and "Conv2d" in small.stdout and "params: 314" in small.stdout, small.stderr
    net = procs.run("-m", "cnnlab", "summary", "mymods:Net", "--input", "3x32x32", "--model-args", '{"width": 6}', cwd=places["root"])
    assert net.returncode == 0 and "6x30x30" in net.stdout, net.stderr


# -- runs are portable; data sets say what they decided ------------------------------------------------------------------


def _folder_dataset(root: Path, first_gray: bool = True) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            mode = "L" if (first_gray and i == 0) else "RGB"
            colour = 40 + 150 * c if mode == "L" else (40 + 150 * c, 90, 200 - 150 * c)
            Image.new(mode, (12, 12), colour).save(root / name / f"{i:02d}.png")
    return root


def test_a_relative_folder_data_set_is_stored_absolute_and_found_from_anywhere(tmp_path, monkeypatch, capsys):
    _folder_dataset(tmp_path / "work" / "myds")
    monkeypatch.chdir(tmp_path / "work")
    result = fit(resolve_config("lenet", dataset="folder:myds", epochs=1, batch_size=4, image_size=28, out="runs/r"), quiet=True)
    config = json.loads((result.folder / "config.json").read_text())
    assert config["dataset"] == f"folder:{tmp_path / 'work' / 'myds'}"
    run = (tmp_path / "work" / "runs" / "r").resolve()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code, out, err = answer(capsys, "evaluate", str(run), "--json")
    assert code == 0 and json.loads(out)["count"] == 2, err


def test_a_colour_folder_is_colour_even_if_its_first_image_is_gray(tmp_path):
    from cnnlab.data import load_folder

    data = load_folder(_folder_dataset(tmp_path / "ds", first_gray=True))
    assert data.image_shape[0] == 3
    gray = tmp_path / "gray"
    for name in ("a", "b"):
        (gray / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), 30 * i).save(gray / name / f"{i}.png")
    assert load_folder(gray).image_shape[0] == 1


def test_images_are_read_in_their_exif_orientation(tmp_path):
    from cnnlab.data import read_image

    picture = Image.new("L", (8, 4), 0)
    picture.paste(255, (0, 0, 4, 4))  # left half white, 8 wide and 4 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the phone was held upright
    picture.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    image = read_image(tmp_path / "phone.jpg", 1, None)
    assert tuple(image.shape) == (1, 8, 4)  # upright: 4 wide, 8 high
    assert image[0, :4].float().mean() > 200 and image[0, 4:].float().mean() < 50  # the white half is now on top


# -- small things a user notices -----------------------------------------------------------------------------------------


def _huge_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image (no pixel data needed: the size check comes first)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_explorer_small_things(run):
    from fastapi.testclient import TestClient

    from cnnlab.explorer import create_app

    client = TestClient(create_app(run, data_dir=str(FIXTURES)))
    answer7 = client.get("/api/kernels/7/0")
    assert answer7.status_code == 404 and answer7.json()["detail"] == "'7' is not a convolution layer; convolution layers: 0, 3"
    assert client.get("/api/test-images", params={"offset": -5}).status_code == 422
    upload = client.post("/api/predict/upload", files={"file": ("huge.png", _huge_png(20000, 20000), "image/png")})
    assert upload.status_code == 415 and "an image, but too large to decode safely" in upload.json()["detail"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Converting a tensor with requires_grad=True to a scalar"
        assert client.get("/api/kernels/3/1").status_code == 200


def test_help_says_each_default_once():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "run folder, new or empty (default: a new runs/<model>-<dataset>-<time>)" in text
    assert "(default: None)" not in text and text.count("default") == text.count("default:") + text.count("default)")
    assert "learning rate (peak, for schedules) (default: 0.9, or the model preset)" in text


def test_evaluate_json_accuracy_is_the_exact_fraction(run, capsys):
    code, out, _ = answer(capsys, "evaluate", str(run), "--data-dir", str(FIXTURES), "--json")
    report = json.loads(out)
    correct = sum(row[i] for i, row in enumerate(report["confusion"]))
    assert code == 0 and report["test_acc"] == correct / report["count"]


def test_tensorboard_prints_no_jit_warnings(tmp_path):
    pytest.importorskip("tensorboard")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fit(resolve_config("lenet", dataset="fashion-mnist", data_dir=str(FIXTURES), epochs=1, batch_size=64, tensorboard=True,
                           out=str(tmp_path / "tb")), quiet=True)
    assert not [w for w in seen if "jit" in str(w.message)], [str(w.message) for w in seen]


def test_readme_summary_call_works():
    from cnnlab.analysis import summary
    from cnnlab.models import create_model

    table = summary(create_model("lenet"), (1, 28, 28)).to_table()
    assert "params: 61,706" in table


def test_figures_go_into_a_folder_that_does_not_exist_yet(run, tmp_path, capsys):
    target = tmp_path / "new" / "deeper" / "k.png"
    code, out, err = answer(capsys, "viz", "kernels", str(run), "--out", str(target))
    assert code == 0 and Image.open(target).size[0] > 100, err


def test_the_subset_line_says_it_once(tmp_path, capsys):
    fit(resolve_config("lenet", dataset="fashion-mnist", data_dir=str(FIXTURES), epochs=1, batch_size=64, subset=120,
                       out=str(tmp_path / "s")))
    out = capsys.readouterr().out
    first = out.splitlines()[0].split(" -> ")[0]
    assert "(120 train / 20 test, from " in first and first.count("subset") == 1 and "after 1 epoch," in out

"""Data: IDX and CIFAR readers, where data is looked for, verified downloads, folders, batches."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.data import Batches, DataFormatError, DataNotFoundError, load_dataset, load_folder, read_idx, sources
from cnnlab.data.formats import read_cifar_batches, to_idx_bytes

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)


def test_read_idx_fixture_raw_and_gzipped(tmp_path):
    images = read_idx(FIXTURES / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    assert images.shape == (600, 28, 28) and images.dtype == np.uint8
    raw = tmp_path / "raw-idx"
    raw.write_bytes(gzip.decompress((FIXTURES / "fashion-mnist" / "train-images-idx3-ubyte.gz").read_bytes()))
    assert np.array_equal(read_idx(raw), images)


@pytest.mark.parametrize(("content", "match"), [
    (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX file"),
    (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x03\x00\x00", "declares 3 dimensions but the file ends"),
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated: header says shape \\(5,\\)"),
    (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "has trailing bytes"),
    (gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc")[:-6], "corrupt or truncated gzip"),
])
def test_read_idx_rejects_bad_files_naming_them(tmp_path, content, match):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_image_and_label_counts_must_agree(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in sources.SPECS["fashion-mnist"].files:
        (folder / name).write_bytes((FIXTURES / "fashion-mnist" / name).read_bytes())
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(to_idx_bytes(np.zeros(599, np.uint8))))
    with pytest.raises(DataFormatError, match="600 images but 599 labels"):
        load_dataset("fashion-mnist", tmp_path, fetch=False)


def test_lookup_order_data_dir_then_env_then_cache_then_debian(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    dirs = sources.search_dirs("mnist", tmp_path / "explicit")
    assert dirs == [tmp_path / "explicit" / "mnist", tmp_path / "explicit", tmp_path / "env" / "mnist", tmp_path / "env",
                    tmp_path / "cache" / "cnnlab" / "mnist", Path("/usr/share/datasets/mnist")]
    data = load_dataset("fashion-mnist", FIXTURES, fetch=False)
    assert data.source == str(FIXTURES / "fashion-mnist")
    assert data.train_images.shape == (600, 1, 28, 28) and data.test_labels.shape == (200,)
    assert data.classes[0] == "t-shirt" and len(data.classes) == 10


def test_not_found_lists_every_place_and_three_ways(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", tmp_path / "nowhere", fetch=False)
    message = str(info.value)
    for place in sources.search_dirs("mnist", tmp_path / "nowhere"):
        assert str(place) in message
    assert "1) download it: cnnlab data mnist --fetch" in message and "2) put the files" in message and "3) " in message


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; choose one of: fashion-mnist, mnist, cifar10, folder:PATH"):
        load_dataset("imagenet")


class _Server:
    """A loopback HTTP server over a folder (bounded: serves until the test ends)."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _spec_for(folder: Path, corrupt: str | None = None) -> sources.DatasetSpec:
    files = {}
    for name in sources.SPECS["fashion-mnist"].files:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        files[name] = "0" * 64 if name == corrupt else digest
    return sources.DatasetSpec("fixture-set", files, (), tuple("abcdefghij"), (0.5,), (0.5,))


def test_download_over_loopback_verifies_and_writes_atomically(tmp_path):
    server = _Server(FIXTURES / "fashion-mnist")
    try:
        folder = sources.download(_spec_for(FIXTURES / "fashion-mnist"), urls=(server.url,), progress=False)
    finally:
        server.close()
    assert folder == tmp_path / "cache" / "cnnlab" / "fixture-set"
    for name in sources.SPECS["fashion-mnist"].files:
        assert (folder / name).read_bytes() == (FIXTURES / "fashion-mnist" / name).read_bytes()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_download_with_wrong_checksum_leaves_nothing_in_the_cache(tmp_path):
    server = _Server(FIXTURES / "fashion-mnist")
    try:
        with pytest.raises(ValueError, match="SHA-256 mismatch") as info:
            sources.download(_spec_for(FIXTURES / "fashion-mnist", corrupt="t10k-images-idx3-ubyte.gz"), urls=(server.url,), progress=False)
    finally:
        server.close()
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    folder = tmp_path / "cache" / "cnnlab" / "fixture-set"
    assert not (folder / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_download_from_an_address_that_fails_says_so(tmp_path):
    server = _Server(tmp_path)  # serves an empty folder: 404 for every file
    try:
        with pytest.raises(ConnectionError, match="could not download train-images-idx3-ubyte.gz"):
            sources.download(_spec_for(FIXTURES / "fashion-mnist"), urls=(server.url,), progress=False)
    finally:
        server.close()


def test_cifar10_from_archive():
    data = load_dataset("cifar10", FIXTURES, fetch=False)
    assert data.train_images.shape == (100, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    assert data.classes[0] == "airplane"


def test_cifar_truncated_record_is_rejected(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(DataFormatError, match="not a whole number of CIFAR-10 records"):
        read_cifar_batches(tmp_path, ["data_batch_1.bin"])


def test_folder_dataset_mixed_formats_and_sizes():
    data = load_folder(FIXTURES / "images", image_size=24)
    assert data.classes == ["circle", "square", "triangle"]
    assert data.train_images.shape[1:] == (3, 24, 24)
    assert len(data.train_labels) + len(data.test_labels) == 36
    assert set(data.test_labels.tolist()) == {0, 1, 2}  # a share of each class held out


def test_folder_dataset_skips_nothing_silently(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not an image at all")
    Image = pytest.importorskip("PIL.Image")
    Image.new("L", (8, 8)).save(tmp_path / "b" / "y.png")
    Image.new("L", (8, 8)).save(tmp_path / "b" / "z.png")
    Image.new("L", (8, 8)).save(tmp_path / "a" / "w.png")
    with pytest.raises(DataFormatError, match="x.png: not a readable image"):
        load_folder(tmp_path)


def test_batches_are_seeded_sharded_and_augmented():
    images = torch.arange(10 * 4, dtype=torch.uint8).view(10, 1, 2, 2).repeat(1, 1, 4, 4)
    labels = torch.arange(10)
    whole = Batches(images, labels, 4, shuffle=True, seed=3)
    again = Batches(images, labels, 4, shuffle=True, seed=3)
    ys = [y for _, y, _ in whole.epoch(1)]
    assert [y.tolist() for y in ys] == [y.tolist() for _, y, _ in again.epoch(1)]  # same seed, same order
    assert sorted(torch.cat(ys).tolist()) == list(range(10)) and [len(y) for y in ys] == [4, 4, 2]
    assert [y.tolist() for _, y, _ in whole.epoch(2)] != [y.tolist() for y in ys]  # a new order each epoch
    resumed = [y.tolist() for _, y, _ in whole.epoch(1, start_step=1)]
    assert resumed == [y.tolist() for y in ys[1:]]
    shards = [Batches(images, labels, 4, shuffle=True, seed=3, rank=r, world_size=2, augment_pad=1, flip=True) for r in (0, 1)]
    full = Batches(images, labels, 4, shuffle=True, seed=3, augment_pad=1, flip=True)
    for (x0, y0, n), (x1, y1, _), (x, y, _) in zip(shards[0].epoch(1), shards[1].epoch(1), full.epoch(1)):
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x) and n == len(y)
    x, _, _ = next(full.epoch(0))
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32

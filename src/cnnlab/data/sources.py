"""Where the built-in data sets come from: a table of files and checksums, the places to look,
and a verified download.

Lookup order for a data set NAME (first complete set of files wins):

    1) --data-dir DIR            (DIR/NAME, then DIR itself)
    2) $CNNLAB_DATA              (same)
    3) the user cache            ($XDG_CACHE_HOME/cnnlab/NAME, default ~/.cache/cnnlab/NAME)
    4) /usr/share/datasets/NAME  (Debian's dataset-fashion-mnist puts Fashion-MNIST here)
    5) a download from the data set's official location into the user cache: streamed with a
       progress bar, SHA-256 checked, written atomically (nothing is left behind on failure).

Files found on disk are not checksummed (Debian recompresses its copy); their readers check
headers and lengths instead. Downloads are checked against the published SHA-256 sums.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPECS", "DataNotFoundError", "DatasetSpec", "cache_dir", "download", "locate", "search_dirs"]


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in data set: its files (name -> SHA-256 of the official download) and where they live."""

    name: str
    files: dict[str, str]
    urls: tuple[str, ...]  # base addresses, tried in order
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    apt_package: str | None = None


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "fashion-mnist",
            dict(zip(_IDX_FILES, (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            ))),
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
            (0.2860,), (0.3530,), apt_package="dataset-fashion-mnist",
        ),
        DatasetSpec(
            "mnist",
            dict(zip(_IDX_FILES, (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ))),
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            tuple(str(d) for d in range(10)),
            (0.1307,), (0.3081,),
        ),
        DatasetSpec(
            "cifar10",
            {"cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"},
            ("https://www.cs.toronto.edu/~kriz/",),
            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ),
    )
}

CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


class DataNotFoundError(FileNotFoundError):
    """No complete copy of a data set was found and none could be downloaded."""


def cache_dir() -> Path:
    """The user cache for downloads: $XDG_CACHE_HOME/cnnlab (default ~/.cache/cnnlab)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """Every directory looked at for data set ``name``, in order."""
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get("CNNLAB_DATA")):
        if root:
            dirs += [Path(root) / name, Path(root)]
    dirs += [cache_dir() / name, Path("/usr/share/datasets") / name]
    return dirs


def _complete(spec: DatasetSpec, directory: Path) -> Path | None:
    """The path to read ``spec`` from in ``directory`` if every file is there, else None.

    IDX files may be gzipped or not; CIFAR-10 may be the archive or its extracted ``.bin`` files.
    """
    if spec.name == "cifar10":
        for candidate in (directory / "cifar-10-binary.tar.gz",):
            if candidate.is_file():
                return candidate
        for folder in (directory, directory / "cifar-10-batches-bin"):
            if all((folder / b).is_file() for b in CIFAR_BATCHES):
                return folder
        return None
    for file in spec.files:
        if not ((directory / file).is_file() or (directory / file.removesuffix(".gz")).is_file()):
            return None
    return directory


def locate(spec: DatasetSpec, data_dir: str | Path | None = None) -> Path | None:
    """The first place holding a complete copy of ``spec``, or None."""
    for directory in search_dirs(spec.name, data_dir):
        found = _complete(spec, directory)
        if found is not None:
            return found
    return None


def not_found_message(spec: DatasetSpec, data_dir, download_error: str | None) -> str:
    looked = "\n".join(f"  - {d}" for d in search_dirs(spec.name, data_dir))
    ways = [f"  1) download it: cnnlab data {spec.name} --fetch (needs network access to {spec.urls[0]})",
            f"  2) put the files ({', '.join(spec.files)}) in a folder and pass --data-dir FOLDER or set CNNLAB_DATA",
            "  3) " + (f"on Debian: apt-get install {spec.apt_package}" if spec.apt_package
                        else f"copy them into the cache folder {cache_dir() / spec.name}")]
    why = f"\nThe download failed: {download_error}" if download_error else ""
    return f"data set {spec.name!r} not found. Looked in:\n{looked}{why}\nThree ways to get it:\n" + "\n".join(ways)


def _fetch_file(url: str, target: Path, sha256: str, progress: bool) -> None:
    """Stream ``url`` into ``target`` atomically, checking its SHA-256; nothing is left on failure."""
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ValueError(f"{url}: SHA-256 mismatch: expected {sha256}, got {digest.hexdigest()}; the file was discarded")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(spec: DatasetSpec, urls: tuple[str, ...] | None = None, progress: bool = True) -> Path:
    """Download every file of ``spec`` into the user cache (skipping files already there); return the folder.

    Raises ``ConnectionError`` when no address works, ``ValueError`` on a checksum mismatch.
    """
    folder = cache_dir() / spec.name
    for name, sha256 in spec.files.items():
        target = folder / name
        if target.is_file():
            continue
        errors = []
        for base in urls or spec.urls:
            try:
                _fetch_file(base.rstrip("/") + "/" + name, target, sha256, progress)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                errors.append(f"{base}: {getattr(err, 'reason', err)}")
        else:
            raise ConnectionError(f"could not download {name}: " + "; ".join(errors))
    return folder

"""The command line's small commands: data lookup, the model list, help without loading torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import procs

FIXTURES = Path(__file__).parent / "fixtures"


def cnnlab(*args: str, **env) -> subprocess.CompletedProcess:
    return procs.run("-m", "cnnlab", *args, env={**os.environ, **env}, timeout=120)


def test_data_command_says_where_each_set_was_found(tmp_path):
    result = cnnlab("data", "--data-dir", str(FIXTURES), XDG_CACHE_HOME=str(tmp_path))
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert f"found: {FIXTURES / 'fashion-mnist'}" in lines["fashion-mnist"]
    assert "found:" in lines["cifar10"]
    assert "not found; looked in:" in lines["mnist"] and str(tmp_path / "cnnlab" / "mnist") in lines["mnist"]


def test_train_list_shows_models_and_presets():
    out = cnnlab("train", "--list").stdout
    header, first = out.splitlines()[:2]
    assert header.split()[:4] == ["model", "input", "params", "mult-adds"]
    assert first.startswith("lenet") and "61,706" in first and "lr=0.9" in first
    assert "vgg11" in out and "ratio=4" in out


def test_help_does_not_import_torch():
    code = "import sys; from cnnlab.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_bad_training_option_is_named():
    result = cnnlab("train", "--ratio", "4")
    assert result.returncode == 2 and "ratio must be a positive int and applies to vgg11/vgg16 only" in result.stderr


def test_the_command_reference_page_is_what_the_parser_prints():
    """docs/cli-reference.md is generated from build_parser(); a changed option must come with the page rewritten."""
    sys.path.insert(0, str(FIXTURES.parents[1] / "scripts"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    assert cli_reference.PAGE.read_text() == cli_reference.page(), "run: python scripts/cli_reference.py"

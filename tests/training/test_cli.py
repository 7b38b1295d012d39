"""The command line: user errors are one line on stderr, never a traceback."""

import json
import os
import subprocess
import sys

from training.cli import build_parser, main


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_missing_idx_data_is_one_clear_line(tmp_path):
    result = _run(
        "train", "--dataset", "idx", "--data-dir", str(tmp_path / "none"), "--run-dir", str(tmp_path)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "no such directory" in result.stderr and "make data" in result.stderr


def test_bad_option_value_is_rejected(tmp_path):
    result = _run("train", "--likelihood", "poisson", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "likelihood must be one of" in result.stderr


def test_flags_are_generated_from_the_config():
    args = build_parser().parse_args(
        ["train", "--latent-dim", "2", "--hidden-dims", "64", "32", "--binarize"]
    )
    assert (args.latent_dim, args.hidden_dims, args.binarize) == (2, [64, 32], True)


def test_train_eval_export_end_to_end(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    common = ["--data-dir", str(data_dir)]
    assert (
        main(
            [
                "train",
                "--run-dir",
                str(run),
                "--epochs",
                "1",
                "--train-limit",
                "1000",
                "--test-limit",
                "100",
                "--latent-dim",
                "3",
                "--hidden-dims",
                "32",
                "--no-progress",
                *common,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--k", "20", "--limit", "50", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 50 and result["iwae_k"] == 20
    models = tmp_path / "models"
    args = [
        "export",
        "--checkpoint",
        str(run / "last.pt"),
        "--models-dir",
        str(models),
        "--name",
        "cli",
        "--k",
        "10",
    ]
    assert main([*args, *common]) == 0
    assert (models / "cli" / "1" / "model.json").is_file()
    assert main([*args, *common]) == 0  # no --version: the next version
    assert (models / "cli" / "2" / "model.json").is_file()
    capsys.readouterr()
    assert main([*args, "--version", "1", *common]) == 3
    assert "immutable" in capsys.readouterr().err

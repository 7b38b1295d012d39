"""The command line: user errors are one line on stderr, never a traceback."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from training.cli import _config_from_args, build_parser, main
from training.config import TrainConfig


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


def test_unknown_choice_is_rejected_by_the_parser_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--likelihood", "poisson"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'poisson'" in err and "'bernoulli', 'gaussian'" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--checkpoint", "x", "--name", "n", "--device", "tpu"])
    assert "'cpu', 'cuda', 'auto'" in capsys.readouterr().err


def test_bad_value_in_a_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"likelihood": "poisson"}))
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: likelihood must be one of bernoulli, gaussian")
    assert "not 'poisson'" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"latent_dim": "abc"}', "latent_dim must be an integer, not 'abc'"),
        ('{"binarize": 1}', "binarize must be true or false, not 1"),
        ('{"hidden_dims": [64, "a"]}', "hidden_dims must be a list of integers"),
        ('{"epochs": 0}', "epochs must be >= 1"),
        ('{"colour": 3}', "unknown config keys: colour"),
        ("[1, 2]", "expected a JSON object of TrainConfig fields"),
    ],
)
def test_config_files_of_the_wrong_shape_are_one_line(tmp_path, capsys, body, message):
    config = tmp_path / "config.json"
    config.write_text(body)
    assert main(["train", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_flags_are_generated_from_the_config(tmp_path):
    args = build_parser().parse_args(
        ["train", "--latent-dim", "2", "--hidden-dims", "64", "32", "--binarize", "--channels", "1"]
    )
    assert (args.latent_dim, args.hidden_dims, args.binarize, args.channels) == (2, [64, 32], True, 1)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"latent_dim": 5, "lr": 0.01}))
    args = build_parser().parse_args(["train", "--config", str(config), "--lr", "0.002"])
    merged = _config_from_args(args)
    assert (merged.latent_dim, merged.lr, merged.epochs) == (5, 0.002, TrainConfig().epochs)


def test_help_shows_each_reason_default_and_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per flag, so the asserts do not depend on wrapping
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
        assert f.metadata["help"] in text, f.name
    assert "--lr LR" in text and "Adam's learning rate; lower it" in text and "(default: 0.001)" in text
    assert "--likelihood {bernoulli,gaussian,discretized_logistic}" in text and "(default: bernoulli)" in text
    assert "--run-dir RUN_DIR" in text and "(default: runs/latest)" in text


def test_help_speaks_of_the_users_choice_not_of_sources_or_history(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    texts = []
    for command in ("train", "eval", "export", "data"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        texts.append(capsys.readouterr().out.lower())
    for word in ("lecture", "pytorch/examples", "earlier version", "used to"):
        assert all(word not in text for text in texts), word


def test_console_scripts_name_themselves_in_usage(capsys):
    with pytest.raises(SystemExit):
        build_parser({"train": "vae-train"}).parse_args(["train", "--epochs", "x"])
    err = capsys.readouterr().err
    assert err.startswith("usage: vae-train ") and "vae-train: error: argument --epochs" in err


def test_top_level_help_lists_each_command_with_a_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("data", "train", "eval", "export"):
        assert any(line.split()[:1] == [name] and len(line.split()) > 3 for line in lines), name


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


_TINY = ["--train-limit", "256", "--test-limit", "32", "--batch-size", "32", "--hidden-dims", "16"]


def test_diverging_training_exits_non_zero_saying_how_to_recover(tmp_path, data_dir):
    run = tmp_path / "run"
    result = _run(
        "train", "--run-dir", str(run), "--data-dir", str(data_dir), "--lr", "1e6", "--epochs", "3",
        "--latent-dim", "2", "--no-progress", *_TINY,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("error: "))
    assert "training diverged" in line and "non-finite" in line
    assert "--lr" in line and "--grad-clip" in line
    assert "final_test" not in result.stdout  # no summary of a nan run


def test_resume_on_an_empty_run_dir_is_an_error_that_changes_nothing(tmp_path, data_dir):
    run = tmp_path / "run"
    run.mkdir()
    result = _run("train", "--run-dir", str(run), "--resume", "--data-dir", str(data_dir), *_TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--resume: no checkpoint {run / 'last.pt'}" in result.stderr
    assert list(run.iterdir()) == []


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    import training.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert cli.main(["train", "--run-dir", "runs/x"]) == 130
    err = capsys.readouterr().err
    assert err == "interrupted; runs/x/last.pt holds the last finished epoch (--resume continues)\n"
    assert cli.main(["eval", "--checkpoint", "x.pt"]) == 130
    assert capsys.readouterr().err == "interrupted\n"

"""DDP across 2 CPU processes (gloo), launched by torchrun: replicas agree, and match a single process."""

import json
import socket
import subprocess
import sys

import pytest
import torch

DRIVER = """
import json, sys, torch
from pathlib import Path
from training.config import TrainConfig
from training.datasets.mnist import load_mnist
from training.train import train

config = TrainConfig(**json.loads(sys.argv[1]))
data = load_mnist(Path(sys.argv[2]))
result = train(config, Path(sys.argv[3]), dataset=data, progress=False, distributed=True)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else None
import os
torch.save(result.model.state_dict(), Path(sys.argv[3]) / f"replica{os.environ['RANK']}.pt")
"""

# Enough steps (2 x 48) to leave the steep first descent, where small noise differences swing the loss.
CONFIG = dict(
    latent_dim=4,
    hidden_dims=(64,),
    epochs=2,
    batch_size=128,
    lr=3e-3,
    train_limit=6144,
    test_limit=500,
    seed=2,
    threads=1,
    device="cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_replicas_match_each_other_and_one_process(tmp_path, data_dir, mnist):
    from training.config import TrainConfig
    from training.train import train

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(driver),
        json.dumps(CONFIG),
        str(data_dir),
        str(run),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = torch.load(run / "replica0.pt", weights_only=True)
    b = torch.load(run / "replica1.pt", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)  # DDP keeps replicas bit-identical

    single = train(TrainConfig(**CONFIG), tmp_path / "single", dataset=mnist, progress=False)
    ddp_rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in ddp_rows] == [1, 2]  # only rank 0 writes the run folder
    for ours, theirs in zip(ddp_rows, single.history, strict=True):
        # Same batches and gradients; only the posterior noise differs between the two runs.
        assert ours["train"]["neg_elbo"] == pytest.approx(theirs["train"]["neg_elbo"], rel=0.02)
        assert ours["test"]["neg_elbo"] == pytest.approx(theirs["test"]["neg_elbo"], rel=0.02)

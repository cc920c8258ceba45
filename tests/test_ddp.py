"""Distributed data parallel on CPU (2 processes, gloo): ranks see different batches and
stay in sync, the double-CV alpha included (its gradient goes through DDP's all-reduce)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent


def test_two_process_ddp_keeps_parameters_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(TESTS / "ddp_check.py"), str(tmp_path)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert len(ranks[0]["batch_sums"]) == 4
    assert ranks[0]["batch_sums"] != ranks[1]["batch_sums"], "each rank must get its own share of the data"
    assert ranks[0]["alpha"].item() != 0.0
    torch.testing.assert_close(ranks[0]["alpha"], ranks[1]["alpha"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["encoder"], ranks[1]["encoder"], rtol=0, atol=0)

"""A checkpoint is data, never code: no path that reads one runs its pickle's code or imports what
it names, even with torch's weights-only default switched off (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SMALL_EVAL, TINY

from discrete_vi.checks import CheckpointError
from discrete_vi.cli import run_cli
from discrete_vi.models import BinaryVAE

ROOT = Path(__file__).resolve().parents[1]


class WritesAMarker:
    """Unpickling this runs `touch <marker>` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def trained(tmp_path_factory) -> Path:
    """last.ckpt of a tiny run."""
    folder = tmp_path_factory.mktemp("trained")
    run_cli(["fit", *TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL, "--trainer.default_root_dir", str(folder)])
    return folder / "lightning_logs/version_0/checkpoints/last.ckpt"


@pytest.fixture
def weights_only_off(monkeypatch):
    """torch's weights-only default switched off, as TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (or torch < 2.6) does."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def with_payload(checkpoint: Path, target: Path, marker: Path) -> Path:
    content = torch.load(checkpoint, weights_only=True)
    content["payload"] = WritesAMarker(marker)
    torch.save(content, target)
    return target


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("discrete-vi: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("subcommand", ["test", "fit", "predict"])
def test_a_pickle_payload_never_runs_from_the_command_line(subcommand, trained, tmp_path, monkeypatch, capsys,
                                                           weights_only_off):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    evil = with_payload(trained, tmp_path / "evil.ckpt", marker)
    with pytest.raises(SystemExit) as exit_info:
        run_cli([subcommand, *TINY, "--ckpt_path", str(evil)])
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "refused" in line and "code" in line and "weights_only=False" in line, line  # why, and how if trusted
    assert not marker.exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_a_pickle_payload_never_runs_through_lightnings_hpc_resume(trained, tmp_path, monkeypatch, capsys,
                                                                   weights_only_off):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    with_payload(trained, tmp_path / "hpc_ckpt_3.ckpt", marker)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, "--ckpt_path", "hpc", "--trainer.default_root_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "refused" in one_error_line(capsys)
    assert not marker.exists()


def test_the_checkpoint_io_loads_weights_only_whatever_torchs_default(trained, tmp_path, weights_only_off):
    from discrete_vi.checkpoints import AtomicCheckpointIO

    marker = tmp_path / "marker"
    evil = with_payload(trained, tmp_path / "evil.ckpt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists()


def test_load_from_checkpoint_never_runs_a_payload(trained, tmp_path, weights_only_off):
    marker = tmp_path / "marker"
    evil = with_payload(trained, tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused"):
        BinaryVAE.load_from_checkpoint(evil)
    assert not marker.exists()
    assert BinaryVAE.load_from_checkpoint(trained).latent_sizes == [20]  # a plain checkpoint loads as before


def with_class_path(checkpoint: Path, target: Path, model: str | None = None, estimator: str | None = None) -> Path:
    content = torch.load(checkpoint, weights_only=True)
    if model:
        content["hyper_parameters"]["_class_path"] = model
    if estimator:
        content["hyper_parameters"]["estimator"] = {"class_path": estimator, "init_args": {}}
    torch.save(content, target)
    return target


def run_module(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m discrete_vi.cli ARGS` in `cwd` (how compare runs test): the current folder is on
    the import path, so a module an attacker left there would be importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "discrete_vi.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("field", ["model", "estimator"])
def test_a_checkpoint_never_chooses_what_is_imported(field, trained, tmp_path):
    (tmp_path / "planted.py").write_text("open('marker', 'w').write('imported')\nclass Anything: pass\n")
    named = {field: "planted.Anything"}
    checkpoint = with_class_path(trained, tmp_path / "named.ckpt", **named)
    result = run_module(["test", "--ckpt_path", str(checkpoint)], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("discrete-vi: error:")]
    option = "--model" if field == "model" else "--model.estimator"
    assert "planted.Anything" in line and f"{option} planted.Anything" in line, line  # how to confirm it
    assert not (tmp_path / "marker").exists()


def test_this_module_named_by_a_checkpoint_is_not_imported(trained, tmp_path):
    """The reviewer's case: `_class_path: this.X` printed the Zen of Python."""
    checkpoint = with_class_path(trained, tmp_path / "zen.ckpt", model="this.X")
    result = run_module(["test", "--ckpt_path", str(checkpoint)], tmp_path)
    assert result.returncode == 2 and "Beautiful is better" not in result.stdout + result.stderr
    with pytest.raises(CheckpointError, match="this.X"):
        BinaryVAE.load_from_checkpoint(checkpoint)


def test_a_class_the_user_names_is_used(trained, tmp_path, monkeypatch):
    """Confirmation: the same class given on the command line is imported by the user's choice."""
    monkeypatch.chdir(tmp_path)
    checkpoint = with_class_path(trained, tmp_path / "custom.ckpt", estimator="custom_estimator.FixedBaselineReinforce")
    cli = run_cli(["test", *TINY, "--ckpt_path", str(checkpoint),
                   "--model.estimator", "custom_estimator.FixedBaselineReinforce"])
    assert type(cli.model.estimator).__name__ == "FixedBaselineReinforce"

"""Failures a user can cause end in one short line on stderr, exit status 2, no traceback and
no run folder; a bug in a user's own code keeps its traceback."""

import gzip
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from discrete_vi.checkpoints import read_checkpoint
from discrete_vi.checks import CheckpointError
from discrete_vi.cli import run_cli
from discrete_vi.estimators import ESTIMATORS
from helpers import SMALL_EVAL, TINY

TESTS = Path(__file__).resolve().parent
MODEL = ["--model.latent_sizes", "[30]", *SMALL_EVAL]


def run_failing(args, tmp_path, capsys) -> str:
    """Run the command line in `tmp_path`; check exit status 2, a short stderr without a traceback
    and no run folder; return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("discrete-vi: error:")]
    assert len(ours) == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists(), "nothing may be left behind"
    return ours[0]


@pytest.fixture
def trained_checkpoint(tmp_path_factory):
    """last.ckpt of a tiny run (latent size 30)."""
    folder = tmp_path_factory.mktemp("trained")
    run_cli(["fit", *TINY, *MODEL, "--trainer.default_root_dir", str(folder)])
    return folder / "lightning_logs/version_0/checkpoints/last.ckpt"


def test_missing_empty_and_corrupt_checkpoints(tmp_path, monkeypatch, capsys, trained_checkpoint):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "truncated.ckpt").write_bytes(trained_checkpoint.read_bytes()[:5000])
    (tmp_path / "noise.ckpt").write_bytes(random.Random(2).randbytes(3000))  # fails torch's unpickler with IndexError
    cases = {"missing.ckpt": "does not exist", "empty.ckpt": "is empty", "truncated.ckpt": "corrupt or truncated",
             "noise.ckpt": "corrupt or truncated"}
    for name, message in cases.items():
        for subcommand in ("fit", "test"):
            line = run_failing([subcommand, *TINY, "--ckpt_path", name], tmp_path, capsys)
            assert name in line and message in line, line


def test_every_damaged_checkpoint_is_refused_in_one_line(tmp_path, trained_checkpoint):
    """Noise (which fails torch's unpickler with IndexError, KeyError or UnicodeDecodeError as
    well as its own errors), cuts and single flipped bits (which torch's zip reader loads: it skips
    the CRC-32s) all end in the one corrupt-checkpoint message; fixed seeds."""
    good = trained_checkpoint.read_bytes()
    rng = random.Random(0)
    damaged = [random.Random(seed).randbytes(3000) for seed in range(300)]
    damaged += [good[:rng.randrange(1, len(good))] for _ in range(50)]
    for _ in range(100):
        flipped = bytearray(good)
        flipped[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(flipped))
    path = tmp_path / "damaged.ckpt"
    for number, data in enumerate(damaged):
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="is corrupt or truncated") as refused:
            read_checkpoint(path)
        assert "\n" not in str(refused.value), (number, str(refused.value))
    path.write_bytes(good)
    assert "state_dict" in read_checkpoint(path)


def test_a_checkpoint_of_another_architecture(tmp_path, monkeypatch, capsys, trained_checkpoint):
    monkeypatch.chdir(tmp_path)
    line = run_failing(["test", *TINY, "--model.latent_sizes", "[20]", "--ckpt_path", str(trained_checkpoint)],
                       tmp_path, capsys)
    assert "another architecture" in line and "[30, 784] there, [20, 784] here" in line, line


def test_resume_last_in_test_needs_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "no lightning_logs/*/checkpoints/last.ckpt" in run_failing(["test", *TINY, "--ckpt_path", "last"],
                                                                       tmp_path, capsys)


def test_corrupt_and_truncated_data_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shared = TESTS.parents[1] / "shared" / "data" / "mnist"
    if not shared.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{shared} is missing")
        pytest.skip(f"{shared} is missing")
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for source in shared.glob("*.gz"):
        (data / source.name).write_bytes(source.read_bytes())
    original = (data / "train-images-idx3-ubyte.gz").read_bytes()
    monkeypatch.setenv("DISCRETE_VI_DATA", str(tmp_path / "data"))
    for damaged in (original[: len(original) // 2], gzip.compress(b"not an idx file")):
        (data / "train-images-idx3-ubyte.gz").write_bytes(damaged)
        line = run_failing(["fit", *TINY, *MODEL, "--data.dataset", "mnist"], tmp_path, capsys)
        assert "train-images-idx3-ubyte.gz" in line, line


def test_unknown_estimator_and_model_names_list_the_valid_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_failing(["fit", *TINY, "--model.estimator", "RLOOO"], tmp_path, capsys)
    assert "'RLOOO'" in line and ", ".join(ESTIMATORS) in line
    line = run_failing(["fit", *TINY, "--model", "BinaryVAEE"], tmp_path, capsys)
    assert "'BinaryVAEE'" in line and "BinaryVAE" in line and "SigmoidBeliefNet" in line
    line = run_failing(["fit", *TINY, "--model.estimator", "no_such_module.Estimator"], tmp_path, capsys)
    assert "no module named 'no_such_module'" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model.estimator", "VIMCO"], ["VIMCO estimates the gradient of the K-sample bound",
                                          "--model.training_objective multi_sample"]),
        (["--model.training_objective", "multi_sample", "--model.estimator", "RLOO"],
         ["RLOO estimates the gradient of the ELBO", "VIMCO, LocalDisARM"]),
        (["--model.training_objective", "multi_sample", "--model.estimator", "LocalDisARM",
          "--model.latent_sizes", "[20, 10]"], ["LocalDisARM is defined for one stochastic layer", "VIMCO"]),
        (["--model.training_objective", "iwae"], ["training_objective", "multi_sample"]),
    ],
    ids=["VIMCO-on-the-ELBO", "RLOO-on-the-bound", "LocalDisARM-on-a-chain", "unknown-objective"],
)
def test_an_estimator_of_another_training_objective_is_one_line(args, words, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_failing(["fit", *TINY, *MODEL, *args], tmp_path, capsys)
    assert all(word in line for word in words), line


def test_a_variance_basket_of_another_training_objective_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_failing(["fit", *TINY, *MODEL, "--model.training_objective", "multi_sample", "--model.estimator", "VIMCO",
                        "--trainer.callbacks+=discrete_vi.callbacks.EstimatorVarianceBasket",
                        "--trainer.callbacks.estimators", "[VIMCO, RLOO, DisARM]"], tmp_path, capsys)
    assert "RLOO, DisARM" in line and "'multi_sample'" in line and "VIMCO, LocalDisARM" in line, line


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.yaml").write_text("model:\n  init_args:\n    latent_sizes: [30\n    lr: 0.1\n")
    line = run_failing(["fit", "--config", "broken.yaml"], tmp_path, capsys)
    assert "broken.yaml, line 4" in line, line
    line = run_failing(["fit", "--config", "absent.yaml"], tmp_path, capsys)
    assert "absent.yaml does not exist" in line


def test_a_diverging_run_says_at_which_step_and_what_to_try(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, "--model", "custom_model.DivergingVAE", "--model.diverge_at", "2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("discrete-vi: error:")]
    assert "diverged at step 2" in line and "non-finite" in line and "--model.lr" in line


def test_a_bug_in_the_users_model_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="invalid literal for int") as error_info:
        run_cli(["fit", *TINY, "--model", "custom_model.BuggyVAE"])
    assert any(entry.name == "__init__" and str(entry.path).endswith("custom_model.py") for entry in error_info.traceback)


def test_the_console_script_fails_in_one_line_without_traceback(tmp_path):
    """The real entry point, in a process of its own: what a user sees on the terminal."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "discrete_vi.cli", "fit", "--model.estimator", "NoSuch"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"discrete-vi: error: unknown estimator 'NoSuch'; choose one of {', '.join(ESTIMATORS)}, "
        "or give a class path (package.module.Class)"
    ]
    assert not any(tmp_path.iterdir())


# --- more failures a user can cause: one line, exit status 2, nothing left behind ---------------


@pytest.mark.parametrize("args, message", [
    (["--trainer.max_steps", "-5"], "--trainer.max_steps must be >= 0"),
    (["--trainer.limit_val_batches", "0.0001", "--data.eval_batch_size", "500"], "limit_val_batches 0.0001 keeps no batch"),
    (["--trainer.logger.init_args.save_dir", "logs"], "needs the logger's class first: --trainer.logger TensorBoardLogger"),
    (["--trainer.default_root_dir", "/sys/discrete_vi_runs"], "cannot write in /sys/discrete_vi_runs"),
])
def test_trainer_options_a_run_cannot_use(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_failing(["fit", *TINY, *MODEL, *args], tmp_path, capsys)
    assert message in line, line


def test_a_config_that_is_a_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    assert "is a folder; give a YAML file" in run_failing(["fit", "--config", "configs"], tmp_path, capsys)


def test_a_full_disk_during_a_checkpoint_write(tmp_path, monkeypatch, capsys):
    """The write of a checkpoint fails (no space left): one line saying what to free or where to
    write, the previous checkpoint intact, no partial file."""
    import errno

    import torch

    from discrete_vi import checkpoints

    monkeypatch.chdir(tmp_path)
    common = ["fit", *TINY, *MODEL, "--trainer.max_epochs", "10", "--last_checkpoint.every_n_train_steps", "2"]
    run_cli([*common, "--trainer.max_steps", "2"])
    real_save = torch.save

    def full(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(checkpoints.torch, "save", full)
    with pytest.raises(SystemExit) as exit_info:
        run_cli([*common, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("discrete-vi: error:")]
    assert "No space left on device" in line and "free space" in line and "--trainer.default_root_dir" in line, line
    folder = tmp_path / "lightning_logs/version_0/checkpoints"
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous one, whole
    assert not list(folder.glob(".*partial*"))


def test_sigterm_stops_a_fit_with_a_nonzero_status(tmp_path):
    """Lightning stops gracefully on SIGTERM and exits 0; a stopped fit is not a finished one."""
    import signal
    import time

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(TESTS.parent)}
    process = subprocess.Popen([sys.executable, "-m", "discrete_vi.cli", "fit", *TINY, *MODEL,
                                "--trainer.max_epochs", "100", "--trainer.limit_train_batches", "200",
                                "--trainer.limit_val_batches", "0", "--last_checkpoint.every_n_train_steps", "5"],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "--ckpt_path last" in err

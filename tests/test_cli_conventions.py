"""Lightning conventions on the command line: default_root_dir, resuming in the same run,
checkpoints that carry their configuration, prediction files, optimizer options, and
callbacks that log on rank 0 only."""

import csv
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from discrete_vi.callbacks import GradientVarianceMonitor, ImageLogger
from discrete_vi.checkpoints import AtomicCheckpointIO
from discrete_vi.cli import run_cli
from discrete_vi.models import BinaryVAE
from helpers import SMALL_EVAL, TINY, steps_by_tag

MODEL = ["--model.latent_sizes", "[30]", "--model.estimator", "DisARM", "--model.estimator.n_pairs", "2", *SMALL_EVAL]


def test_default_root_dir_holds_logs_checkpoints_and_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, *MODEL, "--trainer.default_root_dir", "runs/first"])
    run = tmp_path / "runs/first/lightning_logs/version_0"
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints/last.ckpt").is_file() and list((run / "checkpoints").glob("best-*.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"], "nothing may be written outside default_root_dir"


def test_checkpointing_can_be_turned_off(tmp_path, monkeypatch):
    """`--trainer.enable_checkpointing false` trains and writes no checkpoint (the CLI's own
    checkpoint callbacks are dropped instead of clashing with Lightning's setting)."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, *MODEL, "--trainer.default_root_dir", "runs", "--trainer.enable_checkpointing", "false"])
    assert cli.trainer.global_step == 4 and cli.trainer.checkpoint_callbacks == []
    assert not list(Path("runs").rglob("*.ckpt"))
    assert list(Path("runs").rglob("events.out.tfevents.*"))


def test_resume_last_continues_the_same_run_without_repeated_steps(tmp_path, monkeypatch):
    """Fit 6 steps with `last.ckpt` every 4: steps 4 and 5 were logged after the last checkpoint,
    as when a run is killed. Resuming with `--ckpt_path last` trains on in version_0, logs
    each step once, and keeps the best-checkpoint record."""
    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.max_epochs", "10",
              "--trainer.limit_train_batches", "3", "--last_checkpoint.every_n_train_steps", "4"]
    run_cli(["fit", *common, "--trainer.max_steps", "6"])
    run = tmp_path / "run/lightning_logs/version_0"
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert steps_by_tag(run)["train/elbo"] == [0, 1, 2, 3, 4, 5]
    (best_before,) = [state["best_model_path"] for key, state in saved["callbacks"].items() if "val/log_likelihood" in key]

    resumed = run_cli(["fit", *common, "--trainer.max_steps", "9", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 9
    assert sorted(p.name for p in (tmp_path / "run/lightning_logs").iterdir()) == ["version_0"]
    steps = steps_by_tag(run)
    assert steps["train/elbo"] == list(range(9)), "each step logged once across the kill and the resume"
    for tag, logged in steps.items():
        assert len(logged) == len(set(logged)), (tag, logged)
    assert len(steps["val/log_likelihood"]) == 3  # after epochs ending at steps 3, 6 and 9
    # The best-checkpoint record survives: the best file known at the checkpoint (step 3) is still
    # tracked after the resume, kept as the best or deleted when a better one replaced it.
    assert best_before.endswith("best-epoch0-step3.ckpt")
    callback = resumed.trainer.checkpoint_callback
    assert len(callback.best_k_models) == 1
    assert callback.best_model_path == best_before or not Path(best_before).exists()


def test_resume_last_without_a_checkpoint_starts_a_new_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, *MODEL, "--trainer.default_root_dir", "fresh", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 4
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_resume_last_after_a_kill_before_the_first_checkpoint_starts_again_in_that_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.limit_val_batches", "0",
              "--last_checkpoint.every_n_train_steps", "100"]
    run_cli(["fit", *common, "--trainer.max_steps", "3"])
    run = tmp_path / "run/lightning_logs/version_0"
    shutil.rmtree(run / "checkpoints")  # as if killed before its first checkpoint: events, no checkpoint
    assert steps_by_tag(run)["train/elbo"] == [0, 1, 2]
    capsys.readouterr()
    run_cli(["fit", *common, "--trainer.max_steps", "4", "--ckpt_path", "last"])
    assert "starting again in version_0" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run/lightning_logs").iterdir()) == ["version_0"]
    assert steps_by_tag(run)["train/elbo"] == [0, 1, 2, 3]


def test_checkpoints_carry_the_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, *MODEL, "--model.network", "nonlinear", "--model.hidden_size", "16",
             "--data.batch_size", "20"])
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    # test with nothing but the checkpoint: the model and the data come from it, the logs go to its run
    cli = run_cli(["test", "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1",
                   "--trainer.enable_progress_bar", "false"])
    assert cli.model.latent_sizes == [30] and cli.model.network == "nonlinear"
    assert type(cli.model.estimator).__name__ == "DisARM" and cli.model.estimator.n_pairs == 2
    assert cli.datamodule.batch_size == 20
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert "test/nll" in steps_by_tag(tmp_path / "lightning_logs/version_0")
    # in Python
    model = BinaryVAE.load_from_checkpoint(checkpoint)
    assert model.latent_sizes == [30] and type(model.estimator).__name__ == "DisARM"
    torch.testing.assert_close(model.encoder[0][0].weight, cli.model.encoder[0][0].weight)


def test_a_model_built_in_python_round_trips_through_a_checkpoint(tmp_path):
    import pytorch_lightning as pl

    from discrete_vi.data import BinarizedImageDataModule
    from discrete_vi.estimators import RLOODoubleCV

    model = BinaryVAE(estimator=RLOODoubleCV(3, alpha_lr=2e-3), latent_sizes=(12,), prior_lr=0.0, val_samples=4)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=1, default_root_dir=tmp_path, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(model, BinarizedImageDataModule(batch_size=20, eval_batch_size=50))
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = BinaryVAE.load_from_checkpoint(tmp_path / "model.ckpt")
    assert loaded.estimator.n_samples == 3 and loaded.estimator.lr == 2e-3 and loaded.prior_lr == 0.0
    torch.testing.assert_close(loaded.estimator.alpha, model.estimator.alpha)


def test_predict_writes_per_example_scores_in_the_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, *MODEL])
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    capsys.readouterr()
    run_cli(["predict", "--ckpt_path", str(checkpoint), "--trainer.limit_predict_batches", "2",
             "--data.eval_batch_size", "50", "--trainer.enable_progress_bar", "false"])
    path = tmp_path / "lightning_logs/version_0/predictions.csv"
    assert "lightning_logs/version_0/predictions.csv" in capsys.readouterr().err
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) == 100 and [int(r["example"]) for r in rows] == list(range(100))
    assert all(float(r["elbo"]) <= float(r["log_likelihood"]) + 1e-4 for r in rows)
    assert all(math.isfinite(float(r["log_likelihood"])) for r in rows)


@pytest.mark.parametrize("option", [["--optimizer", "SGD"], ["--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "2"]])
def test_optimizer_options_that_would_replace_the_parameter_groups_are_refused(option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, *MODEL, *option])
    assert exit_info.value.code == 2
    assert "not supported" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


def test_an_estimator_with_parameters_and_no_rate_of_its_own_trains_at_the_models_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model.latent_sizes", "[30]", *SMALL_EVAL, "--model.lr", "0.01",
                   "--model.estimator", "custom_estimator.LearnedBaselineReinforce"])
    assert cli.trainer.global_step == 4
    groups = {g["name"]: g["lr"] for g in cli.trainer.optimizers[0].param_groups}
    assert groups["estimator"] == 0.01
    assert cli.model.estimator.baseline.item() != 0.0  # it learned


def test_logging_callbacks_do_nothing_off_rank_zero():
    class NoWork:
        def gradient_variance(self, *args):
            raise AssertionError("rank != 0 must not measure")

        def images_for_logging(self, *args):
            raise AssertionError("rank != 0 must not draw images")

    trainer = SimpleNamespace(is_global_zero=False, accumulate_grad_batches=1, global_step=0, loggers=[],
                              sanity_checking=False, datamodule=None)
    batch = torch.zeros(4, 784)
    GradientVarianceMonitor(every_n_steps=1).on_train_batch_end(trainer, NoWork(), None, batch, 0)
    images = ImageLogger()
    images.on_validation_batch_end(trainer, NoWork(), None, batch, 0)
    images.on_validation_epoch_end(trainer, NoWork())


def test_help_documents_model_and_estimator_options(capsys):
    for args in (["fit", "--model.help", "BinaryVAE"], ["fit", "--model.estimator.help", "RLOODoubleCV"],
                 ["fit", "--model.estimator.help", "Reinforce"]):
        with pytest.raises(SystemExit):
            run_cli(args)
    printed = capsys.readouterr().out
    for text in ("binary units per stochastic layer", "{linear,nonlinear}", "0 freezes the prior",
                 "learning rate of the learned coefficient alpha", "{none,ema}", "K >= 1 samples per example"):
        assert text in " ".join(printed.split()), text


def test_checkpoint_writes_are_atomic_next_to_their_target(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "logs" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((Path(src), Path(dst))), real_replace(src, dst)))
    io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, target)
    assert moves and all(src.parent == dst.parent == target.parent for src, dst in moves)
    torch.testing.assert_close(torch.load(target, weights_only=True)["state_dict"]["w"], torch.zeros(2))

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "x": Unsaveable()}, target)
    torch.testing.assert_close(torch.load(target, weights_only=True)["state_dict"]["w"], torch.zeros(2))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"], "no partial file left behind"


# --- resuming wherever the configuration writes, options over a checkpoint, one writer per run ---


def test_resume_last_without_a_logger_finds_the_checkpoint_in_the_root(tmp_path, monkeypatch):
    """`--trainer.logger false` writes `checkpoints/last.ckpt` in default_root_dir: resume from it."""
    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.logger", "false",
              "--trainer.max_epochs", "10", "--trainer.limit_val_batches", "0"]
    run_cli(["fit", *common, "--trainer.max_steps", "4"])
    assert (tmp_path / "run/checkpoints/last.ckpt").is_file()
    resumed = run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 6  # continued from step 4, not started again


def test_resume_last_with_a_csv_logger_continues_its_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.logger", "CSVLogger",
              "--trainer.logger.save_dir", "run", "--trainer.max_epochs", "10", "--trainer.limit_val_batches", "0"]
    run_cli(["fit", *common, "--trainer.max_steps", "4"])
    resumed = run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert resumed.trainer.global_step == 6
    assert sorted(p.name for p in (tmp_path / "run/lightning_logs").iterdir()) == ["version_0"]


def test_options_given_with_a_checkpoint_apply_on_top_of_its_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, *MODEL, "--model.network", "nonlinear", "--model.hidden_size", "16"])
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    cli = run_cli(["test", "--ckpt_path", str(checkpoint), "--model.test_samples", "7",
                   "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert cli.model.test_samples == 7
    assert cli.model.network == "nonlinear" and cli.model.latent_sizes == [30]  # the rest from the checkpoint
    assert type(cli.model.estimator).__name__ == "DisARM" and cli.model.estimator.n_pairs == 2


def test_test_and_predict_honour_an_explicit_default_root_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, *MODEL])
    checkpoint = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    run_cli(["test", "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", "elsewhere",
             "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert "test/nll" in steps_by_tag(tmp_path / "elsewhere/lightning_logs/version_0")
    assert "test/nll" not in steps_by_tag(tmp_path / "lightning_logs/version_0")


def test_a_second_resume_of_a_run_in_use_is_refused(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys
    import time

    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.max_epochs", "10"]
    run_cli(["fit", *common, "--trainer.max_steps", "4"])
    run = tmp_path / "run/lightning_logs/version_0"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from discrete_vi.runs import hold_lock; "
                               "hold_lock(sys.argv[1], 'run'); print('held', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_info:
            run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", "last"])
        assert exit_info.value.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("discrete-vi: error:")]
        assert "in use by process" in line and str(holder.pid) in line, line
        assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4  # untouched
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    time.sleep(0.1)
    assert run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", "last"]).trainer.global_step == 6


def test_a_checkpoint_write_killed_midway_leaves_nothing_once_the_next_run_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [*TINY, *MODEL, "--trainer.default_root_dir", "run", "--trainer.max_epochs", "10"]
    run_cli(["fit", *common, "--trainer.max_steps", "4"])
    checkpoints = tmp_path / "run/lightning_logs/version_0/checkpoints"
    stale = checkpoints / ".last.ckpt.partial-4194000"  # its writer (no such process) was killed mid-write
    stale.write_bytes(b"half a checkpoint")
    run_cli(["fit", *common, "--trainer.max_steps", "6", "--ckpt_path", "last"])
    assert not stale.exists() and not list(checkpoints.glob(".*partial*"))

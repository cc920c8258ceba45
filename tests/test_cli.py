"""The command line end to end: fit and test with every estimator, TensorBoard
scalars read back, a user-defined model by class path, and clear errors."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from helpers import ONE_PER_ESTIMATOR, SMALL_EVAL, TINY, case_ids, estimator_args, events, only_version, scalars
from pytorch_lightning.cli import LightningCLI

from discrete_vi.cli import LIGHTNING_PRIVATE_OVERRIDES, run_cli


@pytest.mark.parametrize("case", ONE_PER_ESTIMATOR, ids=case_ids(ONE_PER_ESTIMATOR))
def test_fit_then_test_with_each_estimator_writes_finite_scalars(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ["--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL, *estimator_args(case)]
    run_cli(["fit", *TINY, *model])
    version = only_version(tmp_path)
    checkpoints = sorted(p.name for p in (version / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(p.startswith("best-") for p in checkpoints)
    run_cli(["test", *TINY, *model, "--ckpt_path", str(version / "checkpoints" / "last.ckpt")])
    logged = {}
    for run in (tmp_path / "lightning_logs").iterdir():
        logged.update(scalars(run))
    for tag in ("train/elbo", "val/elbo", "val/log_likelihood", "test/elbo", "test/log_likelihood", "test/nll"):
        assert tag in logged, f"{tag} missing; logged: {sorted(logged)}"
        assert all(math.isfinite(v) for v in logged[tag]), (tag, logged[tag])
    assert len(logged["train/elbo"]) == 4  # every step
    if case.objective == "multi_sample":  # the K-sample bound trained, above the ELBO (mean of f)
        assert len(logged["train/bound"]) == 4 and all(math.isfinite(v) for v in logged["train/bound"])
        if case.name == "VIMCO":  # Jensen: the bound of the same samples is above their mean
            assert all(b >= e for b, e in zip(logged["train/bound"], logged["train/elbo"]))
    else:
        assert "train/bound" not in logged
    assert "hp_metric" not in logged
    for state in case.make().logged_state():
        assert f"estimator/{state}" in logged, (state, sorted(logged))


@pytest.mark.parametrize("case", ONE_PER_ESTIMATOR, ids=case_ids(ONE_PER_ESTIMATOR))
def test_a_user_defined_model_trains_by_class_path_with_each_estimator(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "custom_model.TanhDecoderVAE", *SMALL_EVAL, *estimator_args(case)])
    assert type(cli.model).__name__ == "TanhDecoderVAE"
    assert cli.trainer.global_step == 4
    assert math.isfinite(cli.trainer.callback_metrics["train/elbo"].item())  # for callbacks that monitor it
    assert "train/elbo" in cli.trainer.progress_bar_metrics
    logged = scalars(only_version(tmp_path))
    assert all(math.isfinite(v) for v in logged["train/elbo"]) and len(logged["train/elbo"]) == 4


@pytest.mark.parametrize("estimator", ["RLOODoubleCV", "RODEO"])
def test_double_cv_and_rodeo_train_a_two_layer_vae_and_log_each_layers_state(estimator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[20, 10]", *SMALL_EVAL,
                   "--model.estimator", estimator])
    assert cli.trainer.global_step == 4
    logged = scalars(only_version(tmp_path))
    for state in ("alpha", "layer2/alpha"):
        values = logged[f"estimator/{state}"]
        assert len(values) == 4 and values[-1] != 0.0, (state, values)  # learned from step 1 on
    assert all(math.isfinite(v) for v in logged["train/elbo"] + logged["val/log_likelihood"])


def test_sigmoid_belief_net_reports_test_nll(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--model", "SigmoidBeliefNet", "--model.latent_sizes", "[20, 20]", *SMALL_EVAL,
            "--model.estimator", "DisARM"]
    cli = run_cli(["fit", *args])
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule)[0]
    assert result["test/nll"] == pytest.approx(-result["test/log_likelihood"])
    assert 0 < result["test/nll"] < 392 * math.log(2) * 2


def test_testing_a_double_cv_checkpoint_with_another_estimator(tmp_path, monkeypatch):
    """Options given with --ckpt_path apply on top of the checkpoint's configuration: naming RLOO
    replaces the checkpoint's estimator; the double-CV alpha is then foreign state."""
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
             "--model.estimator", "RLOODoubleCV"])
    checkpoint = only_version(tmp_path) / "checkpoints" / "last.ckpt"
    with pytest.warns(UserWarning, match="estimator state"):
        cli = run_cli(["test", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
                       "--model.estimator", "RLOO", "--ckpt_path", str(checkpoint)])
    assert type(cli.model.estimator).__name__ == "RLOO"


def test_print_config_shows_the_estimator(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--model", "BinaryVAE", "--model.estimator", "DisARM", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "discrete_vi.estimators.DisARM" in printed and "n_pairs: 1" in printed


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "BinaryVAE", "--model.estimator", "NoSuchEstimator"], "NoSuchEstimator"),
        (["--model", "BinaryVAE", "--data.dataset", "cifar"], "dataset"),
        (["--model", "BinaryVAE", "--data.batch_size", "many"], "batch_size"),
        (["--model", "BinaryVAE", "--model.estimator", "RLOO", "--model.estimator.n_samples", "1"], "n_samples must be >= 2"),
        (["--model", "BinaryVAE", "--model.latent_sizes", "[200, 200]",
          "--model.estimator", "custom_estimator.OneLayerReinforce"], "one stochastic layer"),
        (["--model", "BinaryVAE", "--model.input_size", "500"], "input_size"),
        (["--model", "NoSuchModel"], "NoSuchModel"),
    ],
)
def test_bad_configuration_is_one_clear_error_before_training(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "lightning_logs").exists(), "nothing may be written before the configuration is valid"


def test_missing_data_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCRETE_VI_DATA", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, "--model", "BinaryVAE", "--data.dataset", "binarized_mnist"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "binarized_mnist" in err and "download" in err


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--config", str(config)], run=False)
    assert cli.model.estimator is not None
    assert cli.model.input_size == cli.datamodule.input_size
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("#"), "each config says in a comment what it reproduces"


def test_a_user_defined_estimator_trains_by_class_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
                   "--model.estimator", "custom_estimator.FixedBaselineReinforce",
                   "--model.estimator.baseline", "-200"])
    assert type(cli.model.estimator).__name__ == "FixedBaselineReinforce"
    assert cli.model.estimator.baseline == -200
    assert cli.trainer.global_step == 4


def test_quickstart_callbacks_write_images_and_gradient_variance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    run_cli(["fit", "--config", str(config), *TINY, "--trainer.limit_train_batches", "6", *SMALL_EVAL,
             "--trainer.callbacks.init_args.every_n_steps", "2"])
    logged = events(only_version(tmp_path))
    assert {"images/inputs", "images/reconstructions", "images/samples"} <= set(logged.Tags()["images"])
    steps = [e.step for e in logged.Scalars("train/grad_variance")]
    assert steps == [2, 4, 6]
    assert all(e.value > 0 for e in logged.Scalars("train/grad_variance"))


@pytest.mark.parametrize("estimator", ["RLOODoubleCV", "DisARM"])
def test_mixed_precision_clipping_and_accumulation(estimator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
                   "--model.estimator", estimator, "--trainer.precision", "bf16-mixed",
                   "--trainer.gradient_clip_val", "1.0", "--trainer.accumulate_grad_batches", "2"])
    assert cli.trainer.global_step == 2  # 4 batches, 2 per optimizer step
    logged = events(only_version(tmp_path))
    assert [e.step for e in logged.Scalars("train/elbo")] == [0, 1]  # once per optimizer step
    assert all(math.isfinite(e.value) for tag in ("train/elbo", "val/log_likelihood") for e in logged.Scalars(tag))


def test_validate_and_predict_subcommands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ["--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL]
    run_cli(["fit", *TINY, *model])
    checkpoint = str(only_version(tmp_path) / "checkpoints" / "last.ckpt")
    run_cli(["validate", *TINY, *model, "--ckpt_path", checkpoint])
    cli = run_cli(["predict", *TINY, *model, "--ckpt_path", checkpoint])
    predictions = cli.trainer.predict_loop.predictions  # one dict per batch of the test split
    elbo = torch.cat([p["elbo"] for p in predictions])
    log_likelihood = torch.cat([p["log_likelihood"] for p in predictions])
    assert elbo.shape == (1000,) and (elbo <= log_likelihood).all()


def test_the_private_lightning_methods_we_override_are_still_there():
    """LightningCLI's private methods this package overrides or calls (`LIGHTNING_PRIVATE_OVERRIDES`) must
    exist with the parameters the override expects: a Lightning release that renames or
    reshapes one fails here, not silently in a user's run."""
    for name, parameters in LIGHTNING_PRIVATE_OVERRIDES.items():
        method = getattr(LightningCLI, name, None)
        assert callable(method), f"LightningCLI.{name} is gone: revisit DiscreteVICLI.{name}"
        assert tuple(inspect.signature(method).parameters) == parameters, (name, inspect.signature(method))


def test_another_model_gets_its_own_defaults(tmp_path, monkeypatch):
    """jsonargparse keeps an option two classes share when the class changes: choosing
    SigmoidBeliefNet over the default BinaryVAE must not carry BinaryVAE's latent_sizes [200] over."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["--model", "SigmoidBeliefNet", "--trainer.logger", "false"], run=False)
    assert type(cli.model).__name__ == "SigmoidBeliefNet" and cli.model.latent_sizes == [200, 200]
    cli = run_cli(["--model", "SigmoidBeliefNet", "--model.latent_sizes", "[50]", "--trainer.logger", "false"], run=False)
    assert cli.model.latent_sizes == [50]

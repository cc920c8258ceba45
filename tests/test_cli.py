"""The command line end to end: fit and test with every estimator, TensorBoard
scalars read back, a user-defined model by class path, and clear errors."""

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from discrete_vi.cli import run_cli
from discrete_vi.estimators import ESTIMATORS as REGISTRY

ESTIMATORS = {
    "Reinforce": ["--model.estimator", "Reinforce", "--model.estimator.n_samples", "2"],
    "Reinforce-ema": ["--model.estimator", "Reinforce", "--model.estimator.baseline", "ema"],
    "RLOO": ["--model.estimator", "RLOO", "--model.estimator.n_samples", "3"],
    "RLOODoubleCV": ["--model.estimator", "RLOODoubleCV"],
    "ARM": ["--model.estimator", "ARM"],
    "DisARM": ["--model.estimator", "DisARM", "--model.estimator.n_pairs", "2"],
    "ARMS": ["--model.estimator", "ARMS", "--model.estimator.n_samples", "3"],
    "RODEO": ["--model.estimator", "RODEO", "--model.estimator.n_samples", "2"],
    "StraightThrough": ["--model.estimator", "StraightThrough"],
    "GumbelSoftmaxST": ["--model.estimator", "GumbelSoftmaxST", "--model.estimator.temperature", "0.5"],
}
assert {args[1] for args in ESTIMATORS.values()} == set(REGISTRY), "every registered estimator runs from the command line"

TINY = [
    "--seed_everything", "0",
    "--data.dataset", "mnist_subset",
    "--data.batch_size", "25",
    "--data.eval_batch_size", "50",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "4",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.log_every_n_steps", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]
SMALL_EVAL = ["--model.val_samples", "5", "--model.test_samples", "20", "--model.eval_chunk", "8"]


def scalars(log_dir) -> dict[str, list[float]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def only_version(tmp_path):
    versions = sorted((tmp_path / "lightning_logs").iterdir())
    return versions[-1]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_fit_then_test_with_each_estimator_writes_finite_scalars(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ["--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL, *ESTIMATORS[name]]
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
    assert "hp_metric" not in logged
    if name == "RLOODoubleCV":
        assert "estimator/alpha" in logged
    if name == "Reinforce-ema":
        assert "estimator/baseline" in logged


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_a_user_defined_model_trains_by_class_path_with_each_estimator(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "custom_model.TanhDecoderVAE", *SMALL_EVAL, *ESTIMATORS[name]])
    assert type(cli.model).__name__ == "TanhDecoderVAE"
    assert cli.trainer.global_step == 4
    assert math.isfinite(cli.trainer.callback_metrics["train/elbo"].item())  # for callbacks that monitor it
    assert "train/elbo" in cli.trainer.progress_bar_metrics
    logged = scalars(only_version(tmp_path))
    assert all(math.isfinite(v) for v in logged["train/elbo"]) and len(logged["train/elbo"]) == 4


def test_sigmoid_belief_net_reports_test_nll(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--model", "SigmoidBeliefNet", "--model.latent_sizes", "[20, 20]", *SMALL_EVAL,
            "--model.estimator", "DisARM"]
    cli = run_cli(["fit", *args])
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule)[0]
    assert result["test/nll"] == pytest.approx(-result["test/log_likelihood"])
    assert 0 < result["test/nll"] < 392 * math.log(2) * 2


def test_testing_a_double_cv_checkpoint_with_the_default_estimator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
             "--model.estimator", "RLOODoubleCV"])
    checkpoint = only_version(tmp_path) / "checkpoints" / "last.ckpt"
    with pytest.warns(UserWarning, match="estimator state"):
        cli = run_cli(["test", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
                       "--ckpt_path", str(checkpoint)])
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
        (["--model", "BinaryVAE", "--model.latent_sizes", "[200, 200]", "--model.estimator", "RLOODoubleCV"],
         "one stochastic layer"),
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
    events = EventAccumulator(str(only_version(tmp_path)), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert {"images/inputs", "images/reconstructions", "images/samples"} <= set(events.Tags()["images"])
    steps = [e.step for e in events.Scalars("train/grad_variance")]
    assert steps == [2, 4, 6]
    assert all(e.value > 0 for e in events.Scalars("train/grad_variance"))


@pytest.mark.parametrize("estimator", ["RLOODoubleCV", "DisARM"])
def test_mixed_precision_clipping_and_accumulation(estimator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model", "BinaryVAE", "--model.latent_sizes", "[30]", *SMALL_EVAL,
                   "--model.estimator", estimator, "--trainer.precision", "bf16-mixed",
                   "--trainer.gradient_clip_val", "1.0", "--trainer.accumulate_grad_batches", "2"])
    assert cli.trainer.global_step == 2  # 4 batches, 2 per optimizer step
    events = EventAccumulator(str(only_version(tmp_path)), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/elbo")] == [0, 1]  # once per optimizer step
    assert all(math.isfinite(e.value) for tag in ("train/elbo", "val/log_likelihood") for e in events.Scalars(tag))


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

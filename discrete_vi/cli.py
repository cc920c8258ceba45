"""`discrete-vi`: the command line (a LightningCLI).

    discrete-vi fit --config configs/quickstart.yaml
    discrete-vi fit --model BinaryVAE --model.estimator DisARM --model.estimator.n_pairs 2 --data.dataset mnist
    discrete-vi test --config configs/quickstart.yaml --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    discrete-vi fit --config configs/quickstart.yaml --print_config

Models are chosen by name or class path (`--model BinaryVAE`, `--model
my_package.MyModel`: any `BinaryLatentModule`), estimators likewise
(`--model.estimator RLOO`). The data module is `BinarizedImageDataModule`
(`--data.dataset ...`); its `input_size` sets the model's. TensorBoard logs go
to `lightning_logs/`; checkpoints keep the best `val/log_likelihood` and the
last step.
"""

from __future__ import annotations

import inspect
import sys

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI

from discrete_vi import estimators as _estimators  # noqa: F401  (registers estimators by name)
from discrete_vi.data import BinarizedImageDataModule, DataFilesNotFoundError
from discrete_vi.models import BinaryLatentModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/log_likelihood",
    "checkpoint.mode": "max",
    "checkpoint.save_last": True,
    "checkpoint.filename": "best-epoch{epoch}-step{step}",
    "checkpoint.auto_insert_metric_name": False,
}


_JSONARGPARSE_WRAPPING = (
    "Expected a <class 'NoneType'>",
    "Does not validate against any of the Union subtypes",
    "Problem with given class_path",
)


def _reason(error: Exception) -> str:
    """The user's error inside jsonargparse's wrapping of a failed instantiation (its first
    listed reason that is not about the wrapping itself), or the error's own text."""
    listed = [line.strip()[2:] for line in str(error).splitlines() if line.strip().startswith("- ")]
    reasons = [line for line in listed if not line.startswith(_JSONARGPARSE_WRAPPING)]
    return reasons[0] if reasons else str(error).strip()


class DiscreteVICLI(LightningCLI):
    """LightningCLI with the data's input size linked to the model, a checkpoint
    callback on `val/log_likelihood`, and user errors reported in one line."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.link_arguments("data.input_size", "model.init_args.input_size", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            self.parser.error(f"invalid configuration: {_reason(error)}")
        self._check_input_size()

    def _check_input_size(self) -> None:
        """The link sets the model's input size from the data; a different value the user
        gave explicitly would be silently replaced, so refuse it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        requested = config.model.init_args.get("input_size")
        parameter = inspect.signature(type(self.model).__init__).parameters.get("input_size")
        default = parameter.default if parameter is not None else None
        data_size = self.datamodule.input_size
        if requested is not None and requested != default and requested != data_size:
            self.parser.error(
                f"invalid configuration: model.input_size is {requested} but data.dataset="
                f"{self.datamodule.dataset!r} has {data_size} pixels per image; leave model.input_size "
                "unset (it is taken from the data)"
            )


def run_cli(args: list[str] | None = None, run: bool = True) -> DiscreteVICLI:
    """Run the command line and return it (its `trainer`, `model`, `datamodule`);
    `args` replaces `sys.argv[1:]` (for tests and notebooks). With `run=False` there is
    no subcommand: the classes are only configured and instantiated."""
    try:
        return DiscreteVICLI(
            BinaryLatentModule,
            BinarizedImageDataModule,
            subclass_mode_model=True,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "discrete-vi", "default_env": False},
            args=args,
            run=run,
        )
    except DataFilesNotFoundError as error:
        print(f"discrete-vi: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(args: list[str] | None = None) -> None:
    """Entry point of the `discrete-vi` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()

"""`discrete-vi`: the command line (a LightningCLI).

    discrete-vi fit --config configs/quickstart.yaml --trainer.default_root_dir runs/a
    discrete-vi fit --config configs/quickstart.yaml --trainer.default_root_dir runs/a --ckpt_path last   # resume
    discrete-vi test --ckpt_path runs/a/lightning_logs/version_0/checkpoints/last.ckpt
    discrete-vi predict --ckpt_path runs/a/lightning_logs/version_0/checkpoints/last.ckpt
    discrete-vi compare --config configs/quickstart.yaml --grid model.estimator=RLOO,DisARM \
        --grid seed_everything=1,2 --out runs/cmp --jobs 2 -- --trainer.max_steps 20000
    discrete-vi report runs/cmp

`compare` and `report` (grids of runs and their report) are `discrete_vi.compare`'s, with
parsers of their own; the other subcommands are LightningCLI's.

Models are chosen by name or class path (`--model BinaryVAE`, `--model
my_package.MyModel`: any `BinaryLatentModule`), estimators likewise
(`--model.estimator RLOO`; `discrete_vi.estimators.ESTIMATORS` lists them).
The data module is `BinarizedImageDataModule`; its `input_size` sets the
model's. Everything a run writes goes under `--trainer.default_root_dir`
(default: the current folder): `lightning_logs/version_N/` holds the
TensorBoard events, `config.yaml`, `checkpoints/` (best `val/log_likelihood`
and last) and, after `predict`, `predictions.csv`.

Checkpoints carry the model's and the data's configuration: `test`,
`validate` and `predict` with `--ckpt_path` need no other option, and log
into the run the checkpoint belongs to. `fit --ckpt_path last` resumes the
newest run under `default_root_dir` in its own folder.

Errors a user can cause (bad options, missing or corrupt data or
checkpoints, a diverging run) end in one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.callbacks import BasePredictionWriter, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from discrete_vi.checkpoints import (
    LOGS_FOLDER,
    AtomicCheckpointIO,
    RunCheckpoint,
    find_last_checkpoint,
    find_run_without_checkpoint,
    read_checkpoint,
    run_folder,
)
from discrete_vi.checks import CheckpointError, ConfigurationError, NonFiniteObjectiveError
from discrete_vi.data import BinarizedImageDataModule, CorruptFileError, DataFilesNotFoundError, DownloadError
from discrete_vi.estimators import ESTIMATORS, Estimator
from discrete_vi.models import BinaryLatentModule, BinaryVAE, SigmoidBeliefNet

PROG = "discrete-vi"
MODELS = {cls.__name__: cls for cls in (BinaryVAE, SigmoidBeliefNet)}
PROGRESS_BAR_REFRESH_STEPS = 10
"""The progress bar is redrawn every this many steps (Lightning's default bar redraws every step)."""
USER_ERRORS = (ConfigurationError, CheckpointError, DataFilesNotFoundError, CorruptFileError, DownloadError)
"""Exceptions reported as one line and exit status 2; any other keeps its traceback."""

CHECKPOINT_DEFAULTS = {
    "checkpoint.monitor": "val/log_likelihood",
    "checkpoint.mode": "max",
    "checkpoint.save_last": False,
    "checkpoint.filename": "best-epoch{epoch}-step{step}",
    "checkpoint.auto_insert_metric_name": False,
    "last_checkpoint.monitor": None,
    "last_checkpoint.save_top_k": 0,
    "last_checkpoint.save_last": True,
}
"""Two checkpoint callbacks: `--checkpoint.*` keeps the best `val/log_likelihood` (after each
validation), `--last_checkpoint.*` keeps `last.ckpt` (each epoch, and every N training steps
with `--last_checkpoint.every_n_train_steps N`), which `--ckpt_path last` resumes from."""

_JSONARGPARSE_WRAPPING = (
    "Expected a <class 'NoneType'>",
    "Does not validate against any of the Union subtypes",
    "Problem with given class_path",
    "Subtypes:",
    "Errors:",
    "Given value",
)


def fail(message: str) -> None:
    """Print `discrete-vi: error: message` on stderr and exit with status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def summarize_parser_error(message: str) -> str:
    """One line from jsonargparse's nested report: the key it names and the innermost reason."""
    if "required: fit.model" in message or "required: model" in message or "BinaryLatentModule is abstract" in message:
        return f"no model chosen: give --model {' / '.join(MODELS)} (or a class path), or --config FILE"
    choice = re.search(r'Parser key "([^"]+)":\s*Expected a typing\.Literal\[(.*)\]\. Got value: (.*)', message, re.S)
    if choice:
        key, options, value = choice.groups()
        return f"{key} must be one of {options.replace(chr(39), '')}, got {value.strip()!r}"
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    reasons = [line[2:] for line in lines if line.startswith("- ") and not line[2:].startswith(_JSONARGPARSE_WRAPPING)]
    head = lines[0] if lines else "invalid arguments"
    if reasons:
        key = head.split(":")[0] if head.startswith("Parser key") else ""
        return f"{key}: {reasons[0]}" if key else reasons[0]
    return " ".join(lines[:2])


def refuse_optimizer_options(config) -> None:
    """LightningCLI's `--optimizer` / `--lr_scheduler` would replace the model's parameter groups: refuse them."""
    if config.get("optimizer") is not None:
        fail(
            "--optimizer is not supported: it would replace the model's parameter groups (a rate per part and the "
            "estimator's own). The optimizer is Adam; set its rates with --model.lr, the model's per-part options "
            "(e.g. --model.encoder_lr, --model.prior_lr) and the estimator's own (e.g. --model.estimator.alpha_lr)"
        )
    if config.get("lr_scheduler") is not None:
        fail(
            "--lr_scheduler is not supported: learning rates are constant, as in the papers this reproduces; "
            "set them with --model.lr and the model's per-part options"
        )


class DiscreteVIParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line (no usage dump) and exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> None:  # noqa: D401 (argparse's signature)
        fail(f"{summarize_parser_error(message)} (see {PROG} --help)")


def check_config_files(args: list[str]) -> None:
    """Fail with the file and line for a `--config` file that is missing or not valid YAML."""
    for index, arg in enumerate(args):
        if arg in ("-c", "--config") and index + 1 < len(args):
            path = Path(args[index + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        if not path.is_file():
            fail(f"config file {path} does not exist")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            fail(f"config file {path}{where}: {problem}; fix the YAML")


def option_values(args: list[str], option: str) -> list[str]:
    """Values given on the command line for `option` (as `--option value` or `--option=value`)."""
    values = []
    for index, arg in enumerate(args):
        if arg == option and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(option + "="):
            values.append(arg.split("=", 1)[1])
    return values


def check_class_name(value: str, what: str, names: dict[str, type], base: type) -> None:
    """Fail with the valid names when `value` is neither a known name nor an importable class path."""
    if value.lstrip().startswith(("{", "[")) or value.endswith((".yaml", ".yml", ".json")):
        return  # an inline or file configuration: jsonargparse reads it
    if "." not in value:
        if value not in names:
            fail(f"unknown {what} {value!r}; choose one of {', '.join(names)}, or give a class path (package.module.Class)")
        return
    module_name, _, class_name = value.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            fail(f"cannot import {what} {value!r}: no module named {error.name!r}")
        raise  # the user's module itself failed to import: a bug, keep the traceback
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        fail(f"{value!r} is not a {base.__name__} subclass; choose one of {', '.join(names)}, or a class path")


def gives_section(args: list[str], section: str) -> bool:
    """Whether the command line or one of its `--config` files sets anything under `section`."""
    if any(arg == f"--{section}" or arg.startswith((f"--{section}.", f"--{section}=")) for arg in args):
        return True
    for path in option_values(args, "--config") + option_values(args, "-c"):
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(loaded, dict) and section in loaded:
            return True
    return False


def first_error_of_user(error: BaseException) -> BaseException:
    """The innermost exception jsonargparse wrapped while instantiating a class (the cause chain's end)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


class PredictionWriter(BasePredictionWriter):
    """Writes `predict`'s per-example scores to `predictions.csv` in the run's log folder
    (`predictions_rank<R>.csv` per process under DDP) and says where.

    Columns: `example` (position in the predicted split as this process saw it), then every
    score `predict_step` returns (`elbo`, `log_likelihood`, in nats).

    Args:
        output_dir: folder for the file (default: the trainer's log folder).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        import torch

        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        columns = {name: torch.cat([batch[name].float().cpu() for batch in batches]) for name in batches[0]}
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = folder / name
        partial = self.path.with_name(f".{name}.partial")
        with open(partial, "w") as file:
            file.write(",".join(["example", *columns]) + "\n")
            rows = torch.stack(list(columns.values()), 1).tolist()
            file.writelines(f"{i}," + ",".join(f"{v:.6f}" for v in row) + "\n" for i, row in enumerate(rows))
        partial.replace(self.path)
        print(f"{PROG}: predictions for {len(rows)} examples written to {self.path}", file=sys.stderr)


class DiscreteVICLI(LightningCLI):
    """LightningCLI with the data's input size linked to the model, a checkpoint callback on
    `val/log_likelihood`, runs that resume in their own folder, checkpoints that carry their
    configuration, and user errors reported in one line."""

    # --- parsing -----------------------------------------------------------------------

    def parse_arguments(self, parser, args) -> None:
        self._raw_args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_config_files(self._raw_args)
        for value in option_values(self._raw_args, "--model.estimator"):
            check_class_name(value, "estimator", ESTIMATORS, Estimator)
        for value in option_values(self._raw_args, "--model"):
            check_class_name(value, "model", MODELS, BinaryLatentModule)
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RunCheckpoint, "last_checkpoint")
        parser.set_defaults({**CHECKPOINT_DEFAULTS, "model": {"class_path": "discrete_vi.models.BinaryVAE"}})
        parser.link_arguments("data.input_size", "model.init_args.input_size", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path last`, read the checkpoint once (clear errors), and take the model's and
        the data's configuration from it unless the command line or a config file gives them."""
        self._checkpoint = None
        self._restart_version = None  # a run killed before its first checkpoint, started again in its folder
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        refuse_optimizer_options(config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            root = Path(config.trainer.get("default_root_dir") or ".")
            found = find_last_checkpoint(root)
            if found is None:
                if subcommand != "fit":
                    fail(f"--ckpt_path last: no {LOGS_FOLDER}/*/checkpoints/last.ckpt under {root.resolve()}")
                self._restart_version = find_run_without_checkpoint(root)
                again = f"starting again in {self._restart_version}" if self._restart_version else "starting a new run"
                print(f"{PROG}: no checkpoint to resume under {root.resolve() / LOGS_FOLDER}: {again}", file=sys.stderr)
                config.ckpt_path = None
                return
            config.ckpt_path = ckpt_path = str(found)
        if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
            return
        try:
            self._checkpoint = read_checkpoint(ckpt_path)
        except CheckpointError as error:
            fail(str(error))
        given = {}
        for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
            saved = dict(self._checkpoint.get(key) or {})
            saved.pop("_instantiator", None)
            if not saved or gives_section(self._raw_args, section):
                continue
            class_path = saved.pop("_class_path", None)
            given[section] = {"class_path": class_path, "init_args": saved} if class_path else saved
        if given:
            self.config = self.parser.parse_object({subcommand: given}, self.config)

    def before_instantiate_classes(self) -> None:
        if self.subcommand and self.subcommand != "fit":  # fit keeps config.yaml; the others write their own
            self.save_config_kwargs["config_filename"] = f"config_{self.subcommand}.yaml"

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # jsonargparse wraps what a constructor raised: find it
            cause = first_error_of_user(error)
            if isinstance(cause, USER_ERRORS):
                fail(f"invalid configuration: {cause}")
            if cause is error:
                raise
            raise cause from None  # a bug in a constructor: its own traceback
        self._check_input_size()
        if self._checkpoint is not None:
            try:
                self.model.check_checkpoint_fits(self._checkpoint, f"checkpoint {self.config[self.subcommand].ckpt_path}")
            except CheckpointError as error:
                fail(str(error))

    def _check_input_size(self) -> None:
        """The link sets the model's input size from the data; a different value the user
        gave explicitly would be silently replaced, so refuse it."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        requested = config.model.init_args.get("input_size")
        parameter = inspect.signature(type(self.model).__init__).parameters.get("input_size")
        default = parameter.default if parameter is not None else None
        data_size = self.datamodule.input_size
        if requested is not None and requested != default and requested != data_size:
            fail(
                f"invalid configuration: model.input_size is {requested} but data.dataset="
                f"{self.datamodule.dataset!r} has {data_size} pixels per image; leave model.input_size "
                "unset (it is taken from the data)"
            )

    # --- the trainer ---------------------------------------------------------------------

    def instantiate_trainer(self, **kwargs: Any):
        """Default logger: TensorBoard under `default_root_dir`, in the checkpoint's own run when a
        checkpoint of a run is given (resume, test, predict); atomic checkpoint writes."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer", {})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self._default_logger(trainer_config.get("default_root_dir") or ".")
        if not trainer_config.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        callbacks = list(trainer_config.get("callbacks") or [])
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):  # redrawn every step, Lightning's bar costs a tenth of a linear VAE's step on a CPU
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        """`--trainer.enable_checkpointing false` drops the `--checkpoint` and `--last_checkpoint`
        callbacks (Lightning refuses a checkpoint callback when checkpointing is off)."""
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, RunCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    def _default_logger(self, default_root_dir: str) -> TensorBoardLogger:
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        run = run_folder(ckpt_path) if ckpt_path and self._checkpoint is not None else None
        if self._restart_version is not None:  # its events are all hidden: the run starts again at step 0
            return TensorBoardLogger(save_dir=default_root_dir, name=LOGS_FOLDER, version=self._restart_version,
                                     default_hp_metric=False, purge_step=0)
        if run is None:
            return TensorBoardLogger(save_dir=default_root_dir, name=LOGS_FOLDER, default_hp_metric=False)
        root, name, version = run
        if root.resolve() == Path(default_root_dir).resolve():
            root = Path(default_root_dir)  # the same spelling as when saved: ModelCheckpoint keeps its best record
        extra = {}
        if self.subcommand == "fit":  # hide what the killed run logged after this checkpoint
            extra["purge_step"] = int(self._checkpoint.get("global_step", 0))
        return TensorBoardLogger(save_dir=str(root), name=name, version=version, default_hp_metric=False, **extra)

    # --- running -------------------------------------------------------------------------

    def _run_subcommand(self, subcommand: str) -> None:
        """Load the data before the trainer makes a log folder (so a data error leaves none),
        then run; user errors become one line."""
        try:
            self.datamodule.setup(subcommand)
            super()._run_subcommand(subcommand)
        except NonFiniteObjectiveError as error:
            fail(
                f"training diverged at step {self.trainer.global_step}: {error}. Try a lower learning rate "
                "(--model.lr), gradient clipping (--trainer.gradient_clip_val 1.0), or another seed; "
                "resume from an earlier checkpoint with --ckpt_path"
            )
        except USER_ERRORS as error:
            fail(str(error))


def run_cli(args: list[str] | None = None, run: bool = True) -> DiscreteVICLI:
    """Run the command line and return it (its `trainer`, `model`, `datamodule`);
    `args` replaces `sys.argv[1:]` (for tests and notebooks). With `run=False` there is
    no subcommand: the classes are only configured and instantiated."""
    return DiscreteVICLI(
        BinaryLatentModule,
        BinarizedImageDataModule,
        subclass_mode_model=True,
        parser_class=DiscreteVIParser,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": PROG, "default_env": False},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the `discrete-vi` console script. `compare` and `report` (grids of runs
    and their report, `discrete_vi.compare`) have parsers of their own; the other subcommands
    are LightningCLI's."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in ("compare", "report"):
        from discrete_vi.compare.command import SUBCOMMANDS

        status = SUBCOMMANDS[argv[0]](argv[1:])
        if status:
            raise SystemExit(status)
        return
    run_cli(args)


if __name__ == "__main__":
    main()

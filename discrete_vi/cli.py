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
newest run under `default_root_dir` in its own folder (`checkpoints.plan_run`).

Errors a user can cause (`checks.UserError`: bad options, missing or corrupt
data or checkpoints, a diverging run) end in one line on stderr and exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.callbacks import BasePredictionWriter, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from discrete_vi.callbacks import EstimatorVarianceBasket, PredictionWriter
from discrete_vi.checkpoints import AtomicCheckpointIO, RunCheckpoint, check_checkpoint_fits, plan_run
from discrete_vi.checks import UserError, check_input_size
from discrete_vi.console import PROG, fail, say, user_errors_in_one_line
from discrete_vi.data import BinarizedImageDataModule
from discrete_vi.estimators import ESTIMATORS, Estimator
from discrete_vi.models import MODELS, BinaryLatentModule

PROGRESS_BAR_REFRESH_STEPS = 10
"""The progress bar is redrawn every this many steps (Lightning's default bar redraws every step)."""

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

LIGHTNING_PRIVATE_OVERRIDES = {"_parse_ckpt_path": ("self",)}
"""LightningCLI's private methods this class overrides, with the parameters it expects them to
have (tests/test_cli.py checks them against the installed Lightning, so a change there fails
loudly): `_parse_ckpt_path` is replaced by `plan_run` in `parse_arguments`."""

_JSONARGPARSE_WRAPPING = (
    "Expected a <class 'NoneType'>",
    "Does not validate against any of the Union subtypes",
    "Problem with given class_path",
    "Subtypes:",
    "Errors:",
    "Given value",
)


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


class DiscreteVIParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one line (no usage dump) and exit status 2."""

    def error(self, message: str, ex: Exception | None = None) -> None:  # noqa: D401 (argparse's signature)
        fail(f"{summarize_parser_error(message)} (see {PROG} --help)")


# --- checks of the raw arguments, before jsonargparse reads them ------------------------------


def option_values(args: list[str], *options: str) -> list[str]:
    """Values given on the command line for any of `options` (as `--option value` or `--option=value`)."""
    values = []
    for index, arg in enumerate(args):
        if arg in options and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(tuple(f"{option}=" for option in options)):
            values.append(arg.split("=", 1)[1])
    return values


def check_config_files(args: list[str]) -> None:
    """Fail with the file and line for a `--config` file that is missing or not valid YAML."""
    for value in option_values(args, "-c", "--config"):
        path = Path(value)
        if not path.is_file():
            fail(f"config file {path} does not exist")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            fail(f"config file {path}{where}: {problem}; fix the YAML")


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
    for path in option_values(args, "-c", "--config"):
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(loaded, dict) and section in loaded:
            return True
    return False


def innermost_cause(error: BaseException) -> BaseException:
    """The innermost exception jsonargparse wrapped while instantiating a class (the cause chain's end)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


class DiscreteVICLI(LightningCLI):
    """LightningCLI with the data's input size linked to the model, the checkpoint callbacks on
    `val/log_likelihood` and `last.ckpt`, runs that resume in their own folder
    (`checkpoints.plan_run`), checkpoints that carry their configuration, and user errors
    reported in one line."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunCheckpoint, "checkpoint", instantiate=False)
        parser.add_class_arguments(RunCheckpoint, "last_checkpoint", instantiate=False)
        parser.set_defaults({**CHECKPOINT_DEFAULTS, "model": {"class_path": "discrete_vi.models.BinaryVAE"}})
        parser.link_arguments("data.input_size", "model.init_args.input_size", apply_on="instantiate")

    def parse_arguments(self, parser, args) -> None:
        """Check the raw arguments, parse them, then plan the run (`plan_run`) and take the model's
        and the data's configuration from its checkpoint unless the command line or a config file
        gives them."""
        raw = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_config_files(raw)
        for value in option_values(raw, "--model.estimator"):
            check_class_name(value, "estimator", ESTIMATORS, Estimator)
        for value in option_values(raw, "--model"):
            check_class_name(value, "model", MODELS, BinaryLatentModule)
        super().parse_arguments(parser, args)
        self.plan = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        refuse_optimizer_options(config)
        self.plan = plan_run(subcommand, config.get("ckpt_path"), config.trainer.get("default_root_dir"))
        config.ckpt_path = self.plan.ckpt_path
        if self.plan.note:
            say(self.plan.note)
        given = {}
        for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
            saved = dict((self.plan.checkpoint or {}).get(key) or {})
            saved.pop("_instantiator", None)
            if not saved or gives_section(raw, section):
                continue
            class_path = saved.pop("_class_path", None)
            given[section] = {"class_path": class_path, "init_args": saved} if class_path else saved
        if given:
            self.config = self.parser.parse_object({subcommand: given}, self.config)

    def _parse_ckpt_path(self) -> None:
        """Done by `parse_arguments` (LightningCLI's version would read the checkpoint again and
        apply its model configuration over the user's explicit options)."""

    def before_instantiate_classes(self) -> None:
        if self.subcommand and self.subcommand != "fit":  # fit keeps config.yaml; the others write their own
            self.save_config_kwargs["config_filename"] = f"config_{self.subcommand}.yaml"

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:  # jsonargparse wraps what a constructor raised: find it
            cause = innermost_cause(error)
            if isinstance(cause, UserError):
                fail(f"invalid configuration: {cause}")
            if cause is error:
                raise
            raise cause from None  # a bug in a constructor: its own traceback
        # The link replaces the model's input_size by the data's: an explicit other value is refused.
        requested = (self.config[self.subcommand] if self.subcommand else self.config).model.init_args.get("input_size")
        default = inspect.signature(type(self.model).__init__).parameters.get("input_size")
        if requested is not None and default is not None and requested != default.default:
            check_input_size(requested, self.datamodule.input_size, f"data.dataset={self.datamodule.dataset!r}")
        if self.plan is not None and self.plan.checkpoint is not None:
            check_checkpoint_fits(self.model, self.plan.checkpoint, f"checkpoint {self.plan.ckpt_path}")
        for callback in self.trainer.callbacks:  # before the trainer writes anything
            if isinstance(callback, EstimatorVarianceBasket):
                callback.check_objective(self.model)

    def after_instantiate_classes(self) -> None:
        """Load the data before the trainer makes a log folder, so a data error leaves none."""
        if self.subcommand:
            self.datamodule.setup(self.subcommand)

    def instantiate_trainer(self, **kwargs: Any):
        """The checkpoint callbacks (unless checkpointing is off), TensorBoard in the planned run
        folder unless a logger is configured, atomic checkpoint writes, a predictions writer for
        `predict`, and a progress bar redrawn every few steps."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = config.get("trainer", {})
        callbacks = list(trainer_config.get("callbacks") or [])
        if trainer_config.get("enable_checkpointing") is not False:
            callbacks += [RunCheckpoint(**config[key].as_dict()) for key in ("checkpoint", "last_checkpoint")]
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = self.default_logger(trainer_config.get("default_root_dir"))
        if not trainer_config.get("plugins"):
            kwargs["plugins"] = [AtomicCheckpointIO()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def default_logger(self, default_root_dir: str | None) -> TensorBoardLogger:
        """TensorBoard in the planned run folder (a new `version_N` unless resuming or evaluating a run)."""
        plan = self.plan or plan_run("fit", None, default_root_dir)
        extra = {} if plan.purge_step is None else {"purge_step": plan.purge_step}
        return TensorBoardLogger(save_dir=str(plan.save_dir), name=plan.name, version=plan.version,
                                 default_hp_metric=False, **extra)


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


def run_cli(args: list[str] | None = None, run: bool = True) -> DiscreteVICLI:
    """Run the command line and return it (its `trainer`, `model`, `datamodule`);
    `args` replaces `sys.argv[1:]` (for tests and notebooks). With `run=False` there is
    no subcommand: the classes are only configured and instantiated."""
    with user_errors_in_one_line():
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

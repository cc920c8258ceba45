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

import errno
import importlib
import inspect
import re
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from pytorch_lightning.callbacks import BasePredictionWriter, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from discrete_vi.callbacks import EstimatorVarianceBasket, PredictionWriter, ThreadTuner
from discrete_vi.checkpoints import AtomicCheckpointIO, RunCheckpoint, check_checkpoint_fits, check_class_paths
from discrete_vi.checkpoints import checkpoint_configuration
from discrete_vi.checks import UserError, check_count, check_input_size
from discrete_vi.console import PROG, fail, option_values, say, user_errors_in_one_line
from discrete_vi.data import BinarizedImageDataModule
from discrete_vi.estimators import ESTIMATORS, Estimator
from discrete_vi.models import MODELS, BinaryLatentModule
from discrete_vi.compare.runner import follow_parent
from discrete_vi.runs import check_writable, hold_lock, plan_run, release_locks, remove_stale_partials
from discrete_vi.threads import fixed_thread_count, usable_cores

DEFAULT_MODEL = "discrete_vi.models.BinaryVAE"
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

LIGHTNING_PRIVATE_OVERRIDES = {"_parse_ckpt_path": ("self",), "_parser": ("self", "subcommand")}
"""LightningCLI's private methods this class overrides or calls, with the parameters it expects them
to have (tests/test_cli.py checks them against the installed Lightning, so a change there fails
loudly): `_parse_ckpt_path` is replaced by `plan_run` in `parse_arguments`; `_parser` gives the
(sub)command's parser, whose defaults a checkpoint's configuration becomes. One private attribute
is written: a configured logger's `_version`, so that it resumes the planned run (the tests that
resume with a TensorBoard and a CSV logger fail if it goes)."""

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


def check_raw_arguments(args: list[str]) -> None:
    """Fail in one line, before parsing, for config files that are missing, folders or not valid
    YAML, unknown model or estimator names, and logger options without the logger's class."""
    check_config_files(args)
    for value in option_values(args, "--model.estimator"):
        check_class_name(value, "estimator", ESTIMATORS, Estimator)
    for value in option_values(args, "--model"):
        check_class_name(value, "model", MODELS, BinaryLatentModule)
    logger_options = [arg.split("=")[0] for arg in args if arg.startswith("--trainer.logger.")]
    if logger_options and not sets_option(args, "trainer.logger", exactly=True):
        fail(f"{logger_options[0]} needs the logger's class first: --trainer.logger TensorBoardLogger "
             f"(or CSVLogger, ...) {logger_options[0]} VALUE")


def check_config_files(args: list[str]) -> None:
    """Fail with the file and line for a `--config` file that is missing, a folder or not valid YAML."""
    for value in option_values(args, "-c", "--config"):
        path = Path(value)
        if path.is_dir():
            fail(f"config file {path} is a folder; give a YAML file (e.g. configs/quickstart.yaml)")
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


def sets_option(args: list[str], key: str, exactly: bool = False) -> bool:
    """Whether the command line or one of its `--config` files sets the dotted option `key` (or,
    unless `exactly`, anything under it)."""
    prefixes = (f"--{key}=",) if exactly else (f"--{key}.", f"--{key}=")
    if any(arg == f"--{key}" or arg.startswith(prefixes) for arg in args):
        return True
    for path in option_values(args, "-c", "--config"):
        node = yaml.safe_load(Path(path).read_text()) or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


def check_trainer_options(config) -> None:
    """Refuse, in one line, trainer options Lightning would reject deep inside a run, and
    LightningCLI's `--optimizer` / `--lr_scheduler`, which would replace the model's parameter groups."""
    max_steps = config.trainer.get("max_steps")
    if max_steps is not None and max_steps < -1:
        fail(f"--trainer.max_steps must be >= 0 (or -1: no limit), got {max_steps}")
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
        parser.set_defaults({**CHECKPOINT_DEFAULTS, "model": {"class_path": DEFAULT_MODEL}})
        parser.link_arguments("data.input_size", "model.init_args.input_size", apply_on="instantiate")
        parser.add_argument("--threads", type=Optional[int], default=None,
                            help="torch's CPU threads (default: OMP_NUM_THREADS if set, else tuned during "
                                 "training between 1 and the usable cores, whichever is faster; see discrete_vi/threads.py)")

    def parse_arguments(self, parser, args) -> None:
        """Check the raw arguments, parse them, then plan the run (`runs.plan_run`). With a checkpoint,
        its model and data configuration become the defaults and the arguments are parsed again, so
        that the user's options apply on top of it."""
        raw = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        check_raw_arguments(raw)
        super().parse_arguments(parser, args)
        self.plan = None
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        chosen = config.model.get("class_path") if hasattr(config.get("model"), "get") else None
        if chosen and chosen.rpartition(".")[2] != DEFAULT_MODEL.rpartition(".")[2]:
            # Another model than the default: parse again with it as the default, so that the default
            # model's option values are not carried over to it (jsonargparse keeps an option two
            # classes share when the class changes).
            self._parser(subcommand).set_defaults({"model": {"class_path": chosen}})
            super().parse_arguments(parser, args)
            config = self.config[subcommand] if subcommand else self.config
        self.fixed_threads = fixed_thread_count(config.get("threads"))
        if self.fixed_threads is not None:
            torch.set_num_threads(check_count("threads", self.fixed_threads, 1))
        if not subcommand:
            return
        check_trainer_options(config)
        self.plan = plan_run(subcommand, config.get("ckpt_path"), config.trainer.get("default_root_dir"),
                             root_given=sets_option(raw, "trainer.default_root_dir"),
                             checkpoint_dir=config.last_checkpoint.get("dirpath"))
        if self.plan.note:
            say(self.plan.note)
        if self.plan.checkpoint is not None:
            check_class_paths(self.plan.checkpoint, BinaryLatentModule, Estimator, f"checkpoint {self.plan.ckpt_path}")
            self._parser(subcommand).set_defaults(checkpoint_configuration(self.plan.checkpoint))
            super().parse_arguments(parser, args)
            config = self.config[subcommand]
        config.ckpt_path = self.plan.ckpt_path
        if subcommand == "fit" and self.plan.folder is not None:  # resumed or restarted: refuse a second writer
            hold_lock(self.plan.folder, "run")

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
        """Load the data before the trainer makes a log folder, so a data error leaves none; refuse
        a `limit_*_batches` fraction that leaves no batch (Lightning would, after making the folder)."""
        if not self.subcommand:
            return
        self.datamodule.setup(self.subcommand)
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        trainer_config = self.config_init[self.subcommand].get("trainer", {})
        for stage in stages[self.subcommand]:
            limit = trainer_config.get(f"limit_{stage}_batches")
            if isinstance(limit, float) and 0 < limit < 1:
                batches = len(getattr(self.datamodule, f"{stage}_dataloader")())
                if int(batches * limit) == 0:
                    fail(f"--trainer.limit_{stage}_batches {limit} keeps no batch of the {batches} {stage} batches; "
                         f"give at least {1 / batches:.3g} (or a number of batches)")

    def before_fit(self) -> None:
        """Take the run folder's lock (one writer per run), say it if no process can write there,
        and delete what a checkpoint write killed midway left."""
        run = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if self.trainer.is_global_zero:
            check_writable(run)
            hold_lock(run, "run")
            remove_stale_partials(run / "checkpoints")

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
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # weights-only loads, atomic writes
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        if self.tunes_threads(trainer_config) and not any(isinstance(c, ThreadTuner) for c in callbacks):
            callbacks.insert(0, ThreadTuner(max_threads=usable_cores()))  # first: its step times exclude the others' hooks
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        for logger in trainer.loggers:  # a configured TensorBoard or CSV logger resumes in the planned run too
            if self.plan and self.plan.version and Path(getattr(logger, "root_dir", "")) == self.plan.save_dir / self.plan.name:
                logger._version = self.plan.version
        return trainer

    def tunes_threads(self, trainer_config: dict) -> bool:
        """Whether the thread count is left to `ThreadTuner` (which tunes only if the trainer's
        accelerator is the CPU): training with several cores, no thread count given (`--threads`,
        OMP_NUM_THREADS), no deterministic run asked for."""
        return (self.subcommand in ("fit", None) and getattr(self, "fixed_threads", None) is None
                and usable_cores() > 1 and not trainer_config.get("deterministic"))

    def default_logger(self, default_root_dir: str | None) -> TensorBoardLogger:
        """TensorBoard in the planned run folder (a new `version_N` unless resuming or evaluating a run)."""
        plan = self.plan or plan_run("fit", None, default_root_dir)
        extra = {} if plan.purge_step is None else {"purge_step": plan.purge_step}
        return TensorBoardLogger(save_dir=str(plan.save_dir), name=plan.name, version=plan.version,
                                 default_hp_metric=False, **extra)


def run_cli(args: list[str] | None = None, run: bool = True) -> DiscreteVICLI:
    """Run the command line and return it (its `trainer`, `model`, `datamodule`);
    `args` replaces `sys.argv[1:]` (for tests and notebooks). With `run=False` there is
    no subcommand: the classes are only configured and instantiated."""
    try:
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
    except SIGTERMException:  # Lightning stops gracefully, with status 0: a stopped run is not a finished one
        say("stopped by SIGTERM before the end of the run; resume it with --ckpt_path last")
        raise SystemExit(128 + signal.SIGTERM) from None
    except MisconfigurationException as error:  # a trainer option Lightning refuses
        fail(f"invalid trainer configuration: {str(error).strip().splitlines()[0]}")
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        fail(f"cannot write {error.filename or 'a file'}: {error.strerror}; free space there or choose another "
             "folder with --trainer.default_root_dir (the last checkpoint written is intact)")
    finally:
        release_locks()  # the run's lock: held while the command runs


def main(args: list[str] | None = None) -> None:
    """Entry point of the `discrete-vi` console script. `compare` and `report` (grids of runs
    and their report, `discrete_vi.compare`) have parsers of their own; the other subcommands
    are LightningCLI's."""
    argv = list(sys.argv[1:] if args is None else args)
    follow_parent()  # a run started by `discrete-vi compare` ends with it
    if argv and argv[0] in ("compare", "report"):
        from discrete_vi.compare.command import SUBCOMMANDS

        status = SUBCOMMANDS[argv[0]](argv[1:])
        if status:
            raise SystemExit(status)
        return
    run_cli(args)


if __name__ == "__main__":
    main()

"""Checkpoint files: atomic writes, reads that never run code (`read_checkpoint`, and every load
through `AtomicCheckpointIO` or `BinaryLatentModule.load_from_checkpoint`), the classes a checkpoint
may name (`check_class_paths`), and whether a checkpoint fits a model.

A checkpoint is data: it is read with torch's weights-only unpickler whatever torch's default or
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` says, and the model and estimator classes it names are only
used if they are already imported (the package's own, or ones the user named on the command
line or imported in Python), never imported because a file says so.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from discrete_vi.checks import CheckpointError

LAST_CHECKPOINT = "last.ckpt"
TRUSTED_INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"
"""The only instantiator a checkpoint may name (LightningCLI's, which it records itself)."""
ESTIMATOR_PREFIX = "estimator."


class RunCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, with its state key built once instead of on each of the
    ~6 callback calls per training step (Lightning names every hook call by it; building it
    cost about 2% of a linear VAE's step). The key is ModelCheckpoint's own, so checkpoints
    written with either class resume with the other."""

    @property
    def state_key(self) -> str:
        key = self.__dict__.get("_cached_state_key")
        if key is None:
            key = super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
            self.__dict__["_cached_state_key"] = key
        return key


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file next to its target, then renames it into place.

    The rename is atomic because both names are in one folder (one filesystem), so a
    run killed mid-write leaves the previous checkpoint intact and no partial file under
    the checkpoint's name (Lightning's own write goes through a temporary file in the
    system's temp folder, whose move is a copy when the log folder is on another filesystem).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict[str, Any]:
        """Lightning's load (resuming, `--ckpt_path hpc`, evaluation), with weights only: a
        checkpoint's pickle never runs code, whatever torch's default."""
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


READER_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError)
"""The errors torch's reader raises with a message that says what is wrong with a file."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise CheckpointError saying what is wrong and what to do.
    A zip checkpoint (torch's format since 1.6) is also checked against its CRC-32s, which torch skips."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file (or 'last' to resume)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); use another checkpoint of the run")
    try:
        if zipfile.is_zipfile(path):  # torch reads a zip checkpoint without its CRC-32s: a flipped weight would load
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
            if damaged is not None:
                raise zipfile.BadZipFile(f"{damaged} fails its CRC-32 check")
        with warnings.catch_warnings():  # torch warns of odd pickle protocols in damaged files, then fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - damaged bytes fail the unpickler in any way (IndexError, KeyError, ...)
        code = re.search(r"GLOBAL (\S+)", str(error))
        if code:
            raise CheckpointError(
                f"checkpoint {path} was refused: besides weights it holds Python code to run ({code.group(1)}), "
                "and discrete-vi never runs code from a checkpoint. If you trust its source, load it in Python with "
                "torch.load(path, weights_only=False) and save only its state_dict and hyper_parameters again"
            ) from None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, READER_ERRORS) or isinstance(error, UnicodeError):
            reason = "its data cannot be unpickled"  # the unpickler's own IndexError / KeyError say nothing to a user
        elif "Weights only load failed" in reason:
            reason = "not a torch checkpoint file"
        reason = reason.split(". ")[0]  # torch's first sentence says what; the rest is about its internals
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason[:120]}); use another checkpoint of the run"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def imported_class(class_path: str, base: type) -> type | None:
    """The class `class_path` names if its module is already imported and it is a subclass of
    `base`, else None. Imports nothing."""
    module, _, name = str(class_path).rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


def check_class_paths(checkpoint: dict, model_base: type, estimator_base: type, source: str) -> None:
    """Raise CheckpointError unless the model class, its estimator class and the instantiator that
    `checkpoint`'s configuration names are ones this process already has: a `model_base` /
    `estimator_base` subclass already imported (the package's own; a user's once named on the
    command line or imported), and LightningCLI's instantiator. Imports nothing."""
    hparams = checkpoint.get("hyper_parameters") or {}
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator != TRUSTED_INSTANTIATOR:
        raise CheckpointError(f"{source} names the instantiator {instantiator!r}; only {TRUSTED_INSTANTIATOR} is "
                              "used, and nothing a checkpoint names is imported")
    estimator = hparams.get("estimator")
    named = [("model", hparams.get("_class_path"), model_base, "--model"),
             ("estimator", estimator.get("class_path") if isinstance(estimator, dict) else None, estimator_base,
              "--model.estimator")]
    for what, class_path, base, option in named:
        if class_path is not None and imported_class(class_path, base) is None:
            raise CheckpointError(
                f"{source} names the {what} class {class_path!r}, which is not a subclass of {base.__name__} that this program has "
                f"imported; a checkpoint never chooses what is imported. If you trust it, name the class yourself: "
                f"{option} {class_path} (or import its module before loading, in Python)"
            )


def checkpoint_configuration(checkpoint: dict) -> dict:
    """The model's and the data's configuration a checkpoint carries, as command-line defaults:
    `{"model": {"class_path": ..., "init_args": ...}, "data": {...}}` (sections it lacks left out)."""
    defaults = {}
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        saved = dict(checkpoint.get(key) or {})
        saved.pop("_instantiator", None)
        class_path = saved.pop("_class_path", None)
        if saved or class_path:
            defaults[section] = {"class_path": class_path, "init_args": saved} if class_path else saved
    return defaults


def check_checkpoint_fits(model: nn.Module, checkpoint: dict, source: str = "the checkpoint") -> None:
    """Raise CheckpointError unless the checkpoint's model weights (not the estimator's state)
    have exactly `model`'s names and shapes."""
    state = checkpoint.get("state_dict", {})
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ESTIMATOR_PREFIX)}
    theirs = {k: v for k, v in state.items() if not k.startswith(ESTIMATOR_PREFIX)}
    problems = [f"{k} is missing" for k in own if k not in theirs]
    problems += [f"{k} is not in this model" for k in theirs if k not in own]
    problems += [
        f"{k} has shape {list(theirs[k].shape)} there, {list(v.shape)} here"
        for k, v in own.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        saved = checkpoint.get("hyper_parameters", {}).get("_class_path", "another model")
        raise CheckpointError(
            f"{source} holds a model of another architecture ({saved}): {'; '.join(problems[:2])}{more}. "
            "Give no model options to use the checkpoint's own configuration, or the same ones as its run"
        )


def fit_estimator_state(model: nn.Module, checkpoint: dict) -> None:
    """Evaluating a checkpoint does not need its estimator: drop the estimator state in `checkpoint`
    that `model.estimator` does not have (e.g. a double-CV alpha when testing with RLOO), keep
    what it lacks as initialised, and warn."""
    state = checkpoint.get("state_dict", {})
    own = {f"{ESTIMATOR_PREFIX}{k}": v for k, v in model.estimator.state_dict().items()}
    foreign = sorted(k for k in state if k.startswith(ESTIMATOR_PREFIX) and (k not in own or state[k].shape != own[k].shape))
    missing = sorted(k for k in own if k not in state or k in foreign)
    if not foreign and not missing:
        return
    for key in foreign:
        del state[key]
    for key in missing:
        state[key] = own[key]
    rank_zero_warn(
        f"the checkpoint's estimator state does not fit {type(model.estimator).__name__}: "
        f"ignored {foreign or 'nothing'}, kept as initialised {missing or 'nothing'}. "
        "Evaluation does not use the estimator; to resume training, configure the same "
        "model.estimator as the run that saved the checkpoint."
    )

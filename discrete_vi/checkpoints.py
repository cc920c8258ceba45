"""Checkpoint files: atomic writes, checked reads, where a command's run lives (`plan_run`:
resuming, evaluating a run's checkpoint), and whether a checkpoint fits a model.

Runs are laid out as Lightning lays them out:
`<default_root_dir>/lightning_logs/version_<N>/checkpoints/*.ckpt`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from discrete_vi.checks import CheckpointError

LOGS_FOLDER = "lightning_logs"
LAST_CHECKPOINT = "last.ckpt"
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise CheckpointError saying what is wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .ckpt file (or 'last' to resume)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); use another checkpoint of the run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in reason:
            reason = "not a torch checkpoint file"
        reason = reason.split(". ")[0]  # torch's first sentence says what; the rest is about its internals
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({reason[:120]}); use another checkpoint of the run"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def run_folder(checkpoint_path: str | Path) -> tuple[Path, str, str] | None:
    """`(default_root_dir, logger name, version)` of the run a checkpoint belongs to, if it lies in
    Lightning's layout `<root>/<name>/<version>/checkpoints/x.ckpt`; else None."""
    path = Path(checkpoint_path)  # not resolved: the run's paths compare equal to the ones it was saved with
    if path.parent.name != "checkpoints" or len(path.parents) < 4:
        return None
    return path.parents[3], path.parents[2].name, path.parents[1].name


def find_last_checkpoint(root: str | Path, name: str = LOGS_FOLDER) -> Path | None:
    """The newest `last.ckpt` of any run under `<root>/<name>/`, or None."""
    candidates = list(Path(root).glob(f"{name}/*/checkpoints/{LAST_CHECKPOINT}"))
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def find_run_without_checkpoint(root: str | Path, name: str = LOGS_FOLDER) -> str | None:
    """The newest run folder (`version_N`) under `<root>/<name>/` that holds no checkpoint (a run killed
    before its first one), if the newest run is such a one; else None."""
    runs = [p for p in Path(root).glob(f"{name}/version_*") if p.is_dir() and p.name[len("version_"):].isdigit()]
    if not runs:
        return None
    newest = max(runs, key=lambda p: int(p.name[len("version_"):]))
    return None if any(newest.glob("checkpoints/*.ckpt")) else newest.name


@dataclass(frozen=True)
class RunPlan:
    """Where a command's run lives and what it starts from.

    ckpt_path: what the Trainer loads: a resolved file, one of Lightning's own names
        ("best", "hpc", "registry"), or None (a new run).
    checkpoint: the file's content, read and checked once (None when nothing is read here).
    save_dir, name, version: the default logger's run folder `save_dir/name/version`
        (version None: the next free `version_N`).
    purge_step: the step from which the run's earlier events are hidden (a resumed or restarted
        run logs those steps again), or None.
    note: what to tell the user about this choice, or None.
    """

    ckpt_path: str | None
    checkpoint: dict | None
    save_dir: Path
    name: str = LOGS_FOLDER
    version: str | None = None
    purge_step: int | None = None
    note: str | None = None


def plan_run(subcommand: str, ckpt_path: str | None, default_root_dir: str | None) -> RunPlan:
    """The run a command works in, from its checkpoint option and `default_root_dir`.

    - `ckpt_path="last"` resumes the newest `last.ckpt` under `default_root_dir`; with none, `fit`
      starts a new run (or starts again in the newest run folder if it holds no checkpoint: a run
      killed before its first one) and the other subcommands raise CheckpointError.
    - a checkpoint file is read here (CheckpointError if missing, empty, corrupt) and the command
      works in the run folder it belongs to; `fit` hides that run's events after its step.
    """
    root = Path(default_root_dir or ".")
    if ckpt_path == "last":
        found = find_last_checkpoint(root)
        if found is None:
            if subcommand != "fit":
                raise CheckpointError(f"--ckpt_path last: no {LOGS_FOLDER}/*/checkpoints/{LAST_CHECKPOINT} under {root.resolve()}")
            restart = find_run_without_checkpoint(root)
            again = f"starting again in {restart}" if restart else "starting a new run"
            note = f"no checkpoint to resume under {root.resolve() / LOGS_FOLDER}: {again}"
            # A restarted run's events are all hidden: it starts again at step 0.
            return RunPlan(None, None, root, version=restart, purge_step=0 if restart else None, note=note)
        ckpt_path = str(found)
    if not ckpt_path or ckpt_path in ("best", "hpc", "registry"):
        return RunPlan(ckpt_path, None, root)
    checkpoint = read_checkpoint(ckpt_path)
    run = run_folder(ckpt_path)
    if run is None:
        return RunPlan(ckpt_path, checkpoint, root)
    save_dir, name, version = run
    if save_dir.resolve() == root.resolve():
        save_dir = root  # the same spelling as when saved: ModelCheckpoint keeps its best record
    purge_step = int(checkpoint.get("global_step", 0)) if subcommand == "fit" else None
    return RunPlan(ckpt_path, checkpoint, save_dir, name, version, purge_step)


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

"""Checkpoint files: atomic writes, checked reads, and finding a run's last checkpoint.

Runs are laid out as Lightning lays them out:
`<default_root_dir>/lightning_logs/version_<N>/checkpoints/*.ckpt`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from discrete_vi.checks import CheckpointError

LOGS_FOLDER = "lightning_logs"
LAST_CHECKPOINT = "last.ckpt"


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

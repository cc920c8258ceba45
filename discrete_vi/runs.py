"""Run folders: where a command's run lives (`plan_run`: a new run, a resumed one, the run a
checkpoint belongs to), finding a run's last checkpoint, and one process per run at a time.

Runs are laid out as Lightning lays them out: `<default_root_dir>/<logger name>/version_<N>/`
holding `checkpoints/*.ckpt` (or `<default_root_dir>/checkpoints/` without a logger).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from discrete_vi.checkpoints import LAST_CHECKPOINT, read_checkpoint
from discrete_vi.checks import CheckpointError, UserError

LOGS_FOLDER = "lightning_logs"
LOCK_FILE = ".discrete-vi.lock"
LIGHTNING_NAMES = ("best", "hpc", "registry")
"""`--ckpt_path` values that Lightning resolves itself."""


@dataclass(frozen=True)
class RunPlan:
    """Where a command's run lives and what it starts from.

    ckpt_path: what the Trainer loads: a resolved file, one of Lightning's own names
        (`LIGHTNING_NAMES`), or None (a new run).
    checkpoint: the file's content, read and checked once (None when nothing is read here).
    save_dir, name, version: the logger's run folder `save_dir/name/version` (version None: the
        next free `version_N`).
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

    @property
    def folder(self) -> Path | None:
        """The existing run folder this command works in (resumed, restarted or evaluated), or None."""
        return self.save_dir / self.name / self.version if self.version else None


def plan_run(subcommand: str, ckpt_path: str | None, default_root_dir: str | None, root_given: bool = False,
             checkpoint_dir: str | None = None) -> RunPlan:
    """The run a command works in, from its checkpoint option and `default_root_dir`.

    - `ckpt_path="last"` resumes the newest `last.ckpt` this configuration writes
      (`find_last_checkpoint`); with none, `fit` starts a new run (or starts again in the newest run
      folder if it holds no checkpoint: a run killed before its first one) and the other
      subcommands raise CheckpointError.
    - a checkpoint file is read here (CheckpointError if missing, empty, corrupt or unsafe) and the
      command works in the run folder it belongs to (`fit` hides that run's events after its step),
      except that `test`, `validate` and `predict` log under a `default_root_dir` given explicitly
      (`root_given`) in a new run there.
    """
    root = Path(default_root_dir or ".")
    if ckpt_path == "last":
        found = find_last_checkpoint(root, checkpoint_dir)
        if found is None:
            if subcommand != "fit":
                raise CheckpointError(f"--ckpt_path last: no {LOGS_FOLDER}/*/checkpoints/{LAST_CHECKPOINT} (nor "
                                      f"checkpoints/{LAST_CHECKPOINT}) under {root.resolve()}; give a checkpoint's path")
            restart = find_run_without_checkpoint(root)
            again = f"starting again in {restart}" if restart else "starting a new run"
            note = f"no checkpoint to resume under {root.resolve()}: {again}"
            # A restarted run's events are all hidden: it starts again at step 0.
            return RunPlan(None, None, root, version=restart, purge_step=0 if restart else None, note=note)
        ckpt_path = str(found)
    if ckpt_path == "hpc":  # Lightning resumes the newest hpc_ckpt_<N>.ckpt: check it here, in one line
        saved = [path for path in root.glob("hpc_ckpt_*.ckpt") if path.stem.rpartition("_")[2].isdigit()]
        if saved:
            read_checkpoint(max(saved, key=lambda path: int(path.stem.rpartition("_")[2])))
    if not ckpt_path or ckpt_path in LIGHTNING_NAMES:
        return RunPlan(ckpt_path, None, root)
    checkpoint = read_checkpoint(ckpt_path)
    run = run_folder(ckpt_path)
    if run is None or (root_given and subcommand != "fit"):
        return RunPlan(ckpt_path, checkpoint, root)
    save_dir, name, version = run
    if save_dir.resolve() == root.resolve():
        save_dir = root  # the same spelling as when saved: ModelCheckpoint keeps its best record
    purge_step = int(checkpoint.get("global_step", 0)) if subcommand == "fit" else None
    return RunPlan(ckpt_path, checkpoint, save_dir, name, version, purge_step)


def run_folder(checkpoint_path: str | Path) -> tuple[Path, str, str] | None:
    """`(default_root_dir, logger name, version)` of the run a checkpoint belongs to, if it lies in
    Lightning's layout `<root>/<name>/<version>/checkpoints/x.ckpt`; else None."""
    path = Path(checkpoint_path)  # not resolved: the run's paths compare equal to the ones it was saved with
    if path.parent.name != "checkpoints" or len(path.parents) < 4 or not path.parents[1].name.startswith("version_"):
        return None
    return path.parents[3], path.parents[2].name, path.parents[1].name


def find_last_checkpoint(root: str | Path, checkpoint_dir: str | Path | None = None) -> Path | None:
    """The newest `last.ckpt` that a run under `root` writes: in `checkpoint_dir` when the checkpoint
    callback names one, else in any logger's `<root>/<name>/version_N/checkpoints/` (TensorBoard's,
    CSV's) or in `<root>/checkpoints/` (no logger). None if there is none."""
    if checkpoint_dir is not None:
        candidates = [Path(checkpoint_dir) / LAST_CHECKPOINT]
    else:
        candidates = [Path(root) / "checkpoints" / LAST_CHECKPOINT, *Path(root).glob(f"*/version_*/checkpoints/{LAST_CHECKPOINT}")]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


def find_run_without_checkpoint(root: str | Path, name: str = LOGS_FOLDER) -> str | None:
    """The newest run folder (`version_N`) under `<root>/<name>/` that holds no checkpoint (a run killed
    before its first one), if the newest run is such a one; else None."""
    runs = [p for p in Path(root).glob(f"{name}/version_*") if p.is_dir() and p.name[len("version_"):].isdigit()]
    if not runs:
        return None
    newest = max(runs, key=lambda p: int(p.name[len("version_"):]))
    return None if any(newest.glob("checkpoints/*.ckpt")) else newest.name


class RunInUseError(UserError):
    """Another process is working in the same run folder."""


_held: dict[Path, IO] = {}
"""The locks this process holds: until `release_locks`, or until it exits (the operating system
releases them then, however it ends: a crashed holder leaves nothing stuck)."""


def hold_lock(folder: Path, what: str) -> None:
    """Take the lock of `folder` (a run, or a comparison's output) until `release_locks`, or raise
    RunInUseError naming the process that holds it."""
    folder = Path(folder)
    if folder.resolve() in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunInUseError(f"{what} {folder} is in use by {holder}; wait for it to end or stop it, "
                            "then run this command again") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    _held[folder.resolve()] = handle


def release_locks() -> None:
    """Release every lock this process holds (at the end of a command run from Python)."""
    while _held:
        _, handle = _held.popitem()
        handle.close()


def check_writable(folder: Path) -> None:
    """Raise UserError unless files can be created in `folder` (created if missing), saying why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write in {folder}: {error.strerror}; free space there or choose another "
                        "folder with --trainer.default_root_dir") from None


def remove_stale_partials(folder: Path) -> None:
    """Delete the temporary files of checkpoint writes (`.<name>.partial-<pid>`) in `folder` whose
    writing process is gone (killed mid-write)."""
    for partial in Path(folder).glob(".*.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_exists(int(pid)):
            partial.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

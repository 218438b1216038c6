"""Which checkpoint files a training run writes, and where (spec §6.4, §6.5). A task picks the policy; the
loop writes the files (atomically) in the order the policy lists them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from ..config import DataConfig
from ..data import data_dir_of, resolve_path
from ..errors import DataError


def base_name(cfg_path: str | os.PathLike) -> str:
    """Darknet's <base>: the file name without folders and without everything from the first '.'."""
    return Path(cfg_path).name.split(".")[0]


def backup_folder(data_config: DataConfig) -> Path:
    """The .data `backup` folder: relative to the working directory as Darknet, or to the .data file's folder
    when it exists there and not here. Without the key: `backup/` here (Darknet's default is /backup/ at the
    filesystem root)."""
    folder = Path(resolve_path(data_config.backup or "backup/", data_dir_of(data_config)))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the backup folder {folder}: {exc.strerror or exc}",
                        data_config.path, data_config.lines.get("backup")) from None
    return folder


class CheckpointPolicy:
    """File names (in the backup folder) to write after an iteration and at the end of a run."""
    #: Darknet's interval for <base>.backup when the command line does not choose one
    default_backup_every: ClassVar[int] = 1000

    def __init__(self, base: str, backup_every: int | None = None):
        self.base = base
        self.backup_every = backup_every or self.default_backup_every

    def after_iteration(self, batch: int, epoch: int, new_epoch: bool) -> list[str]:
        raise NotImplementedError

    def final(self) -> str:
        raise NotImplementedError

    def interrupted(self) -> str:
        """What Ctrl-C or SIGTERM saves before the run exits."""
        return f"{self.base}.backup"

    def best(self) -> str:
        """Kept whenever the task's main metric improves (train --validate)."""
        return f"{self.base}_best.weights"


class EpochCheckpoints(CheckpointPolicy):
    """`classifier train`: <base>_<epoch>.weights when an epoch completes, then <base>.backup every
    `backup_every` batches (Darknet: 1000), <base>.weights at the end."""

    def after_iteration(self, batch, epoch, new_epoch):
        names = [f"{self.base}_{epoch}.weights"] if new_epoch else []
        if batch % self.backup_every == 0:
            names.append(f"{self.base}.backup")
        return names

    def final(self):
        return f"{self.base}.weights"


class DetectorCheckpoints(CheckpointPolicy):
    """`detector train`: <base>.backup every `backup_every` batches (Darknet: 100), <base>_<i>.weights when
    i % 10000 == 0 or (i < 1000 and i % 100 == 0), <base>_final.weights at the end."""

    default_backup_every = 100

    def after_iteration(self, batch, epoch, new_epoch):
        names = []
        if batch % self.backup_every == 0:
            names.append(f"{self.base}.backup")
        if batch % 10000 == 0 or (batch < 1000 and batch % 100 == 0):
            names.append(f"{self.base}_{batch}.weights")
        return names

    def final(self):
        return f"{self.base}_final.weights"

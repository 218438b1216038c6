"""`darknetpy train`: one loop (loop.py) for every task (darknetpy/tasks), its checkpoint policies
(checkpoints.py) and its typed per-iteration records (metrics.py)."""
from .checkpoints import CheckpointPolicy, DetectorCheckpoints, EpochCheckpoints, backup_folder, base_name
from .loop import IterationContext, TrainingDiverged, TrainingRun, TrainOptions
from .metrics import IterationRow, MetricsLog

__all__ = ["CheckpointPolicy", "DetectorCheckpoints", "EpochCheckpoints", "IterationContext", "IterationRow",
           "MetricsLog", "TrainOptions", "TrainingDiverged", "TrainingRun", "backup_folder", "base_name"]

"""cnnlab.train: the typed configuration, presets, and fit() with checkpoints, resume and torchrun/DDP."""

from .config import PRESETS, TrainConfig, resolve_config
from .loop import RunResult, TrainingError, evaluate, fit, load_run_model

__all__ = ["PRESETS", "RunResult", "TrainConfig", "TrainingError", "evaluate", "fit", "load_run_model", "resolve_config"]

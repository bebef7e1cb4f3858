"""Train one variant: typed config, DataModules, LightningModule, throughput, W&B, checkpoints that resume."""
from ..keys import MONITOR
from .config import TrainConfig, build_config, load_config
from .run import TrainingDiverged, find_checkpoint, train

__all__ = ["MONITOR", "TrainConfig", "TrainingDiverged", "build_config", "find_checkpoint", "load_config", "train"]

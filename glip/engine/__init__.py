"""Training: the loop (accelerate), optimiser and schedule, resumable checkpoints, EMA."""

from glip.engine.checkpoint import Progress, latest_checkpoint
from glip.engine.data import ShardedBatchSampler, build_dataset
from glip.engine.ema import ModelEMA
from glip.engine.optim import WarmupSchedule, build_optimizer, build_schedule, clip_grad_norm, param_groups
from glip.engine.run import TrainingInterrupted, build_training_model, prepare_for_training, train
from glip.engine.trainer import Evaluator, LossModel, Trainer, TrainResult

__all__ = [
    "Evaluator",
    "LossModel",
    "ModelEMA",
    "Progress",
    "ShardedBatchSampler",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "WarmupSchedule",
    "build_dataset",
    "build_optimizer",
    "build_schedule",
    "build_training_model",
    "clip_grad_norm",
    "latest_checkpoint",
    "param_groups",
    "prepare_for_training",
    "train",
]

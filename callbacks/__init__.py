from .model_card import ModelCardCallback, training_hyperparameters
from .task_eval import TaskEvalCallback, scores_from_log_history

__all__ = ["ModelCardCallback", "TaskEvalCallback", "scores_from_log_history", "training_hyperparameters"]

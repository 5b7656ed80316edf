from .base import Engine, SamplingParams, truncate_at_stop
from .transformers_engine import TransformersEngine

__all__ = ["Engine", "SamplingParams", "TransformersEngine", "truncate_at_stop"]

from .base import Engine, SamplingParams, truncate_at_stop
from .openai_engine import OpenAIEngine, ServerError
from .transformers_engine import TransformersEngine

__all__ = ["Engine", "OpenAIEngine", "SamplingParams", "ServerError", "TransformersEngine", "truncate_at_stop"]

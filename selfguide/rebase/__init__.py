"""ReBase: retrieve rows of existing datasets for a task and transform them into its format.

One file per stage: datastore.py (build, save, load), retrieval.py (score, guard, dedupe),
transformation.py (prompt, JSON repair, validation), pipeline.py (the stages end to end).
"""

from .datastore import Datastore, DatastoreError, Source, build_datastore
from .pipeline import ReBasePipeline
from .retrieval import ContaminationGuard, Retrieved, retrieve
from .transformation import Transformer, parse_answer

__all__ = [
    "ContaminationGuard",
    "Datastore",
    "DatastoreError",
    "ReBasePipeline",
    "Retrieved",
    "Source",
    "Transformer",
    "build_datastore",
    "parse_answer",
    "retrieve",
]

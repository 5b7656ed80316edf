"""ReBase: retrieve rows of existing datasets for a task and transform them into its format.

One file per stage: datastore.py (build, save, load), retrieval.py (score, guard, dedupe),
transformation.py (prompt, JSON repair, validation), pipeline.py (the stages end to end).
"""

from .datastore import Datastore, DatastoreError, Source, build_datastore
from .retrieval import ContaminationGuard, Retrieved, retrieve

__all__ = ["ContaminationGuard", "Datastore", "DatastoreError", "Retrieved", "Source", "build_datastore", "retrieve"]

from .cards import (
    EMBEDDED_BASE_MODEL_ID,
    EMBEDDED_LICENSE,
    CardValidationError,
    DataSummary,
    ModelCardInfo,
    render_dataset_card,
    render_model_card,
    validate_dataset_card,
    validate_model_card,
)

__all__ = [
    "EMBEDDED_BASE_MODEL_ID",
    "EMBEDDED_LICENSE",
    "CardValidationError",
    "DataSummary",
    "ModelCardInfo",
    "render_dataset_card",
    "render_model_card",
    "validate_dataset_card",
    "validate_model_card",
]

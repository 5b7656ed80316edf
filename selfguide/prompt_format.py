"""`prompt_format="auto"`: chat prompts for a student whose tokenizer carries a chat template, documents otherwise.

Decided from the tokenizer or the GGUF metadata alone, before any weights load, since the dataset's
columns depend on it: strings for documents, TRL's conversational rows for chat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import ConfigError
from .student import DEFAULT_STUDENT, _embedded_gguf, resolve_student

PROMPT_FORMATS = ("auto", "chat", "document")


def gguf_chat_template(path) -> Optional[str]:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def has_chat_template(model: Optional[str], base_url: Optional[str] = None, tokenizer: Optional[str] = None) -> bool:
    """Whether the student's tokenizer has a chat template. A served model's comes from `tokenizer`, since an
    OpenAI-compatible server does not say; without one it counts as having none."""
    source = tokenizer if base_url else (tokenizer or model)
    if base_url and not source:
        return False
    if source in (None, "", DEFAULT_STUDENT):
        source = _embedded_gguf()
    if Path(str(source)).suffix == ".gguf":
        return bool(gguf_chat_template(Path(str(source)).expanduser()))
    from transformers import AutoTokenizer

    return bool(AutoTokenizer.from_pretrained(resolve_student(str(source))).chat_template)


def resolve_prompt_format(prompt_format: str, model: Optional[str], base_url: Optional[str] = None, tokenizer: Optional[str] = None) -> str:
    """"chat" or "document"; "auto" by the student's chat template."""
    if prompt_format == "document":
        return prompt_format
    chat = has_chat_template(model, base_url, tokenizer)
    if prompt_format == "chat" and not chat:
        where = "no tokenizer= names the served model's tokenizer" if base_url and not tokenizer else "the student's tokenizer has no chat template"
        raise ConfigError(f"prompt_format: 'chat', but {where}. Fix: prompt_format='document' (or 'auto')"
                          + (", or tokenizer=<the served model's Hub id, folder or .gguf>" if base_url else ", or an instruct model"))
    return "chat" if chat else "document"

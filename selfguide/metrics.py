"""The paper's task metrics: exact match after label extraction, and token-level ROUGE-L."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Mapping, Optional, Sequence
from .errors import ConfigError

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_TOKEN = re.compile(r"[a-z0-9]+")  # rouge_score's tokens, the paper's ROUGE-L
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script


def normalize(text: str) -> str:
    """Lowercase, drop punctuation and articles, squeeze whitespace (SQuAD normalisation), for free text."""
    text = _PUNCT.sub(" ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_label(text: str) -> str:
    """Lowercase, drop punctuation, squeeze whitespace: NI's answer normalisation, which keeps articles.

    Labels are compared with this, not `normalize`: dropping articles would erase the labels "A" and
    "An", so that an empty answer, "." or "the" read as A and "The answer is A." as no label.
    """
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def match_label(answer: str, labels: Sequence[str], aliases: Optional[Mapping[str, Sequence[str]]] = None) -> Optional[str]:
    """The label `answer` is, up to normalisation, or None: no search inside longer text.

    `aliases` maps a label to other names for it ("E": ["entailment"]); an answer that is an alias
    reads as its label. Text with no word in it is no label.
    """
    answer = normalize_label(answer)
    if not answer:
        return None
    by_norm = {normalize_label(alias): label for label, names in (aliases or {}).items() for alias in names}
    by_norm.update({normalize_label(label): label for label in labels})
    return by_norm.get(answer)


def extract_label(text: str, labels: Sequence[str]) -> Optional[str]:
    """The label whose normalised string ends last in `text` (models often explain before answering).

    Comparing end positions, then lengths, lets "not entailment" win over the "entailment" inside it.
    Text with no word in it names no label.
    """
    norm = normalize_label(text)
    if not norm:
        # Its padded form "  " would equal the needle of a label that normalises to nothing.
        return None
    norm = f" {norm} "
    best, best_key = None, (-1, -1)
    for label in labels:
        needle = f" {normalize_label(label)} "
        pos = norm.rfind(needle)
        if pos != -1 and (pos + len(needle), len(needle)) > best_key:
            best, best_key = label, (pos + len(needle), len(needle))
    return best


def answer_counts(predictions: Sequence[str], labels: Sequence[str]) -> Counter:
    """How often each answer was given, read as exact match reads it (the label it names, else the text)."""
    return Counter(extract_label(p, labels) or normalize_label(p) for p in predictions)


def most_frequent_answer(predictions: Sequence[str], labels: Sequence[str]) -> tuple[str, float]:
    """The answer given most often, read as exact match reads it, and its share of the rows in percent.

    A classifier that gives every input one label scores that label's share of the rows, which can pass
    for skill; a share near 100 tells the two apart.
    """
    if not predictions:
        raise ConfigError("predictions: none given. Fix: pass the answers of at least one row")
    answer, count = answer_counts(predictions, labels).most_common(1)[0]
    return answer, 100 * count / len(predictions)


def exact_match(prediction: str, reference: str, labels: Optional[Sequence[str]] = None) -> float:
    if labels:
        prediction = extract_label(prediction, labels) or prediction
        return float(normalize_label(prediction) == normalize_label(reference))
    return float(normalize(prediction) == normalize(reference))


def _tokens(text: str, pattern: re.Pattern = _TOKEN) -> list[str]:
    return pattern.findall(text.lower())


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lowercase tokens, as rouge_score tokenises for the paper (NI adds a Porter stemmer,
    left out here): runs of [a-z0-9]. Texts in which that finds nothing (Cyrillic, CJK, Arabic) are read as
    runs of letters and digits of any script instead, or they would all tie at 1.0.
    """
    p, r = _tokens(prediction), _tokens(reference)
    if not p and not r:
        p, r = _tokens(prediction, _WORD), _tokens(reference, _WORD)
    if not p or not r:
        # With no word on a side there is nothing to overlap: only the same text matches.
        return float(prediction.strip() == reference.strip())
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def metric_name(task_type: str) -> str:
    return "exact_match" if task_type == "classification" else "rougeL"


def task_score(task_type: str, predictions: Sequence[str], references: Sequence[str], labels=None) -> float:
    """Mean metric on a 0-100 scale, as the paper reports it."""
    if not references:
        raise ConfigError("references: no rows to score. Fix: give the task gold rows (a 'test' list or NI Instances)")
    if task_type == "classification":
        values = [exact_match(p, r, labels) for p, r in zip(predictions, references)]
    else:
        values = [rouge_l(p, r) for p, r in zip(predictions, references)]
    return 100.0 * sum(values) / len(values)

"""The paper's task metrics: exact match after label extraction, and ROUGE-L as Natural Instructions scores it."""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from typing import Mapping, Optional, Sequence, Union

from rouge_score import rouge_scorer, tokenizers

from .errors import ConfigError

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
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


class AnyScriptTokenizer(tokenizers.DefaultTokenizer):
    """rouge_score's tokens (lowercase runs of [a-z0-9], Porter-stemmed when built with `use_stemmer`); a text in
    which those find nothing (Cyrillic, CJK, Arabic) is read as its lowercase runs of letters and digits of any
    script instead, unstemmed, or every such answer would score 0.
    """

    def tokenize(self, text: str) -> list[str]:
        return super().tokenize(text) or _WORD.findall(text.lower())


# Natural Instructions' own evaluation scores the raw texts with RougeScorer(["rougeL"], use_stemmer=True), whose
# tokenizer is DefaultTokenizer(use_stemmer=True): this one, until a text has no [a-z0-9] in it.
_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=AnyScriptTokenizer(use_stemmer=True))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from rouge_score, as NI computes it (stemmed [a-z0-9] tokens), with
    `AnyScriptTokenizer`'s reading of texts in other scripts. A side with no token scores 0.0."""
    return float(_ROUGE.score(reference, prediction)["rougeL"].fmeasure)


def metric_name(task_type: str) -> str:
    return "exact_match" if task_type == "classification" else "rougeL"


def task_score(
    task_type: str, predictions: Sequence[str], references: Sequence[Union[str, Sequence[str]]], labels=None
) -> float:
    """Mean metric on a 0-100 scale, as the paper reports it.

    A reference is a row's answer, or every answer it accepts (`Example.answers`): then the row scores its
    best, as NI's `metric_max_over_ground_truths` does.
    """
    if not references:
        raise ConfigError("references: no rows to score. Fix: give the task gold rows (a 'test' list or NI Instances)")
    metric = functools.partial(exact_match, labels=labels) if task_type == "classification" else rouge_l
    values = [max(metric(p, r) for r in ((refs,) if isinstance(refs, str) else refs)) for p, refs in zip(predictions, references)]
    return 100.0 * sum(values) / len(values)

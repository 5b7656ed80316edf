"""ReBase stage 3, transformation: an LLM rewrites each retrieved row into the task's input/output format.

The prompt is a plain document (instruction, the demos as JSON lines, the source row, and the start
of the answer object), so a base model continues it as readily as a served teacher does. Answers
must be a JSON object with "input" and "output"; a malformed one is repaired by `json_repair` where its
content is still recoverable, and otherwise counted under its reason and dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import json_repair

from ..engines import Engine, SamplingParams
from ..metrics import normalize
from ..report import FilterReport
from ..task import Task
from .retrieval import ContaminationGuard

ANSWER_PREFIX = '{"input": "'
TRANSFORM_STOP = ("\n\n", "\nSource record", "\nNew example")
_FIELD_CHARS = 600
_ROW_CHARS = 2000
_ANSWER_MARKER = "answer is"
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


def _clip(value, limit: int):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


def source_record(content: dict) -> str:
    """The row as one JSON line, long fields clipped so the prompt fits a small context."""
    clipped = {k: _clip(v, _FIELD_CHARS) for k, v in content.items() if v not in (None, "", [], {})}
    return _clip(json.dumps(clipped, ensure_ascii=False), _ROW_CHARS)


def _example(input_text: str, output: str) -> str:
    return json.dumps({"input": input_text, "output": output}, ensure_ascii=False)


def transformation_prompt(task: Task, content: dict, cot: bool = False) -> str:
    demos = "\n".join(_example(e.input, e.output) for e in task.examples)
    rules = ["Take the content from the record, and follow the format and style of the examples."]
    if task.is_classification:
        rules.append(f"The answer must be one of: {', '.join(task.named_labels())}.")
    if cot:
        rules.append('In "output", reason step by step, then end with "So the answer is <answer>."')
    # One worked rewrite, made from the first demo, shows the pattern (record in, example out) that
    # small base models otherwise miss, copying a demo instead. With `cot` it is left out: the demos
    # carry no reasoning to show.
    worked = ""
    if not cot:
        first = task.examples[0]
        worked = f"Source record: {source_record({'text': first.input})}\nNew example: {_example(first.input, first.output)}\n\n"
    return (
        f"{task.instruction.strip()}\n\n"
        f"Examples, one JSON object per line:\n{demos}\n\n"
        "Each source record below is rewritten into one new example of this task, as one JSON object with exactly "
        f'the keys "input" and "output". {" ".join(rules)}\n\n'
        f"{worked}"
        f"Source record: {source_record(content)}\n"
        f"New example: {ANSWER_PREFIX}"
    )


# -- parsing and repair -------------------------------------------------------------------------


@dataclass
class Parsed:
    fields: Optional[dict] = None
    repaired: bool = False
    error: Optional[str] = None  # "malformed_json", "missing_field" or "empty_field"


def _first_object(text: str) -> Optional[dict]:
    try:
        obj, _ = json.JSONDecoder(strict=False).raw_decode(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _repaired_object(text: str) -> Optional[dict]:
    """json_repair's reading of a malformed object (trailing commas, Python quoting, typographic or unescaped
    quotes, a cut-off end); of several objects, the first."""
    try:
        obj = json_repair.loads(text)
    except ValueError:  # nesting deeper than its parser goes
        return None
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    return obj if isinstance(obj, dict) else None


def parse_answer(text: str) -> Parsed:
    """Read {"input", "output"} from a model answer; repair it if needed, never raise."""
    text = _FENCE.sub("", text).strip()
    start = text.find("{")
    if start < 0:
        return Parsed(error="malformed_json")
    body = text[start:]
    obj = _first_object(body)
    repaired = obj is None
    if obj is None:
        obj = _repaired_object(body)
    if obj is None:
        return Parsed(error="malformed_json")
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    if "input" not in fields or "output" not in fields:
        return Parsed(error="missing_field", repaired=repaired)
    values = {}
    for key in ("input", "output"):
        value = fields[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            return Parsed(error="empty_field", repaired=repaired)
        values[key] = value.strip()
    return Parsed(fields=values, repaired=repaired)


def final_answer(reasoning: str) -> Optional[str]:
    """The answer a chain of thought ends with ('... So the answer is X.'), or None."""
    at = reasoning.lower().rfind(_ANSWER_MARKER)
    if at < 0:
        return None
    # Markdown emphasis, quotes and the closing full stop wrap the answer, they are not part of it.
    return reasoning[at + len(_ANSWER_MARKER) :].strip(" \t\n\"'`*.:") or None


# -- the stage ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one retrieved row: kept with its fields, or dropped with a reason."""

    status: str  # "ok" or the drop reason
    repaired: bool = False
    input: str = ""
    output: str = ""
    reasoning: str = ""
    raw: str = ""
    label_from_source: bool = False  # the label is the source row's, not the rewriter's


class Transformer:
    def __init__(
        self,
        task: Task,
        engine: Engine,
        cot: bool = False,
        temperature: float = 0.0,
        max_new_tokens: Optional[int] = None,
        seed: int = 0,
    ):
        self.task, self.engine, self.cot = task, engine, cot
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed
        self.guard = ContaminationGuard.for_task(task)
        self._demo_inputs = {normalize(e.input) for e in task.examples}
        self._demo_input_tokens = max(engine.count_tokens([e.input]) for e in task.examples)
        self._demo_output_tokens = max(engine.count_tokens([e.output]) for e in task.examples)

    def prompt(self, content: dict) -> str:
        return transformation_prompt(self.task, content, self.cot)

    def params(self, contents: list[dict]) -> SamplingParams:
        """Room for the answer object: models often carry a source field over whole, so the input
        budget covers the longest (clipped) field of the batch; the output gets twice the longest
        demo output, plus the reasoning with `cot`. Too small a budget truncates the JSON."""
        tokens = self.max_new_tokens
        if tokens is None:
            fields = [_clip(v, _FIELD_CHARS) for c in contents for v in c.values() if isinstance(v, str)]
            longest_field = max((self.engine.count_tokens([f]) for f in fields), default=0)
            tokens = max(longest_field, 2 * self._demo_input_tokens) + 2 * self._demo_output_tokens + 24 + (192 if self.cot else 0)
        return SamplingParams(temperature=self.temperature, max_new_tokens=tokens, stop=TRANSFORM_STOP, seed=self.seed)

    def transform(self, contents: list[dict], source_labels: Optional[Sequence[Optional[str]]] = None) -> list[Outcome]:
        answers = self.engine.generate([self.prompt(c) for c in contents], self.params(contents))
        source_labels = source_labels or [None] * len(contents)
        return [self.judge(ANSWER_PREFIX + a[0], label) for a, label in zip(answers, source_labels)]

    def judge(self, raw: str, source_label: Optional[str] = None) -> Outcome:
        """Parse and validate one answer (the prefilled start of the object included).

        `source_label`, the label the source row already carries, overrides the rewriter's: it was
        given by the dataset's annotators, and a small rewriter answers near chance (on NI task199
        the embedded student contradicted 21 of 32 e-SNLI labels). A chain of thought that ends in
        another label argues for the wrong answer, so that row is dropped instead.
        """
        parsed = parse_answer(raw)
        if parsed.fields is None:
            return Outcome(parsed.error, parsed.repaired, raw=raw)
        text_in, text_out = parsed.fields["input"], parsed.fields["output"]
        reasoning = ""
        answer = text_out
        if self.cot:
            reasoning = text_out
            answer = final_answer(text_out)
            if answer is None:
                return Outcome("no_final_answer", parsed.repaired, text_in, text_out, raw=raw)
        from_source = False
        if self.task.is_classification:
            label = self.task.label_of(answer)
            if source_label is not None:
                if label != source_label and self.cot:
                    return Outcome("disagrees_with_source", parsed.repaired, text_in, answer, reasoning, raw)
                label, from_source = source_label, True
            if label is None:
                return Outcome("label_not_in_set", parsed.repaired, text_in, answer, reasoning, raw)
            answer = label
        if normalize(text_in) in self._demo_inputs:
            return Outcome("copied_demo", parsed.repaired, text_in, answer, reasoning, raw, from_source)
        if self.guard and self.guard.overlaps(text_in):
            return Outcome("gold_overlap", parsed.repaired, text_in, answer, reasoning, raw, from_source)
        return Outcome("ok", parsed.repaired, text_in, answer, reasoning, raw, from_source)


def record(outcomes: Sequence[Outcome], report: FilterReport) -> None:
    """Add the transform and JSON-repair counts of `outcomes` to `report`."""
    drops: dict[str, int] = {}
    for o in outcomes:
        if o.status != "ok":
            drops[o.status] = drops.get(o.status, 0) + 1
    report.add("transform", len(outcomes), len(outcomes) - sum(drops.values()), drops)
    needed = [o for o in outcomes if o.repaired or o.status == "malformed_json"]
    if needed:
        unrepaired = sum(o.status == "malformed_json" for o in needed)
        report.add("json_repair", len(needed), len(needed) - unrepaired, {"malformed_json": unrepaired})

"""`EditRequest`: the one record every loader produces and every editor consumes."""
from __future__ import annotations

from collections.abc import Iterable  # isinstance with typing.Iterable is 5x slower (loading 20k requests checks 40k)
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from .errors import RequestError, RequestTypeError


@dataclass(frozen=True)
class PromptAnswer:
    """A prompt and the answer the model should give to it (locality or portability probe)."""

    prompt: str
    answer: str
    kind: str = ""  # e.g. "neighborhood", "Reasoning", "Subject_Aliasing"


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into a model: after the edit, ``prompt`` should continue with ``target_new``.

    ``target_true`` is what the model is believed to say now (CounterFact's ground truth); it is
    optional, but the CounterFact scores (efficacy, paraphrase, neighborhood) need it.
    """

    prompt: str
    target_new: str
    subject: Optional[str] = None
    target_true: Optional[str] = None
    rephrase_prompts: tuple[str, ...] = ()
    locality: tuple[PromptAnswer, ...] = ()
    portability: tuple[PromptAnswer, ...] = ()
    case_id: Optional[Any] = None
    # ROME's CounterFact: prompts whose free generations are scored for fluency and consistency, and the ids
    # (relation, new object) under which its reference snippets of the new object are filed
    generation_prompts: tuple[str, ...] = ()
    relation_id: Optional[str] = None
    target_new_id: Optional[str] = None

    def __post_init__(self) -> None:
        where = f"EditRequest(case_id={self.case_id!r})"
        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise RequestTypeError(f"{where}: field '{name}' must be a string, got {_type_name(value)} {value!r}; "
                                       "write it as text in quotes.")
            if not value.strip():
                raise RequestError(f"{where}: field '{name}' is empty; give the text of the {name.replace('_', ' ')}.")
        for name in ("subject", "target_true", "relation_id", "target_new_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RequestTypeError(f"{where}: field '{name}' must be a string or None, got {_type_name(value)} {value!r}; "
                                       "write it as text in quotes or leave it out.")
        if self.subject is not None and not self.subject.strip():
            raise RequestError(f"{where}: field 'subject' is empty; give the subject or leave it None.")
        for name in ("rephrase_prompts", "generation_prompts", "locality", "portability"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
                what = "a list of strings" if name.endswith("_prompts") else "a list of PromptAnswer(prompt, answer) items"
                hint = "; wrap it in a list: [\"...\"]" if isinstance(value, str) else ""
                raise RequestTypeError(f"{where}: field '{name}' must be {what}, not {_type_name(value)}{hint}.")
            object.__setattr__(self, name, tuple(value))
        for name in ("rephrase_prompts", "generation_prompts"):
            for j, p in enumerate(getattr(self, name)):
                if not isinstance(p, str):
                    raise RequestTypeError(f"{where}: field '{name}[{j}]' is {_type_name(p)} {p!r}; every prompt must be a string.")
                if not p.strip():
                    raise RequestError(f"{where}: field '{name}' holds {p!r}; every prompt must be a non-empty string.")
        for name in ("locality", "portability"):
            for j, item in enumerate(getattr(self, name)):
                if not isinstance(item, PromptAnswer):
                    raise RequestTypeError(f"{where}: field '{name}' must hold PromptAnswer(prompt, answer) items, got {type(item).__name__}.")
                for part in ("prompt", "answer", "kind"):
                    value = getattr(item, part)
                    if not isinstance(value, str):
                        raise RequestTypeError(f"{where}: field '{name}[{j}].{part}' must be a string, got {_type_name(value)} "
                                               f"{value!r}; write it as text in quotes.")
                if not item.prompt.strip() or not item.answer.strip():
                    raise RequestError(f"{where}: field '{name}' holds an empty prompt or answer: {item!r}.")

    def require_subject(self, method: str) -> str:
        """The subject, checked to occur in the prompt (locate-then-edit methods find it there)."""
        where = f"EditRequest(case_id={self.case_id!r})"
        if self.subject is None:
            raise RequestError(f"{where}: method '{method}' needs field 'subject' (the entity whose fact changes); set subject=.")
        if self.subject not in self.prompt:
            raise RequestError(
                f"{where}: field 'subject' {self.subject!r} does not occur in field 'prompt' {self.prompt!r}; "
                f"method '{method}' locates the subject's tokens in the prompt, so write the subject into the prompt exactly."
            )
        return self.subject

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "EditRequest":
        where = f"EditRequest(case_id={record.get('case_id')!r})"

        def probes(name: str) -> tuple:
            items = record.get(name, ())
            if isinstance(items, (str, bytes, dict)) or not isinstance(items, (list, tuple)):
                raise RequestTypeError(f"{where}: field '{name}' must be a list of {{\"prompt\": ..., \"answer\": ...}} objects, "
                                       f"got {_type_name(items)}.")
            out = []
            for j, x in enumerate(items):
                if isinstance(x, PromptAnswer):
                    out.append(x)
                    continue
                if not isinstance(x, dict) or not {"prompt", "answer"} <= x.keys() or not x.keys() <= {"prompt", "answer", "kind"}:
                    got = sorted(x) if isinstance(x, dict) else _type_name(x)
                    raise RequestTypeError(f"{where}: field '{name}[{j}]' must be an object with keys 'prompt' and 'answer' "
                                           f"(and optionally 'kind'), got {got}.")
                out.append(PromptAnswer(**x))
            return tuple(out)

        missing = [name for name in ("prompt", "target_new") if name not in record]
        if missing:
            raise RequestTypeError(f"{where}: field '{missing[0]}' is missing; a request needs 'prompt' and 'target_new'.")
        return cls(
            prompt=record["prompt"],
            target_new=record["target_new"],
            subject=record.get("subject"),
            target_true=record.get("target_true"),
            rephrase_prompts=record.get("rephrase_prompts", ()),  # checked in __post_init__: one string is refused
            locality=probes("locality"),
            portability=probes("portability"),
            case_id=record.get("case_id"),
            generation_prompts=record.get("generation_prompts", ()),
            relation_id=record.get("relation_id"),
            target_new_id=record.get("target_new_id"),
        )


def _type_name(value: Any) -> str:
    """JSON-ish name of a value's type, for messages about data files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object (dict)"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _as_list(value: Any, n: int, field_name: str) -> list:
    """One value per prompt: ``None`` (none given), one string (for one prompt), or a list of ``n``; anything else
    (a number, a dict, a list of another length) is a ``RequestError`` naming the field."""
    if value is None:
        return [None] * n
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RequestTypeError(f"'{field_name}' must be a list with one item per prompt (or one string for one "
                               f"prompt), got {_type_name(value)} {value!r}.")
    value = list(value)
    if len(value) != n:
        raise RequestError(f"'{field_name}' has {len(value)} items but 'prompts' has {n}; give one per prompt.")
    return value


def _texts(value: Any, field_name: str) -> list[str]:
    """A probe's prompts or answers: one string or a list of strings; never a number turned into text."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
        raise RequestTypeError(f"'{field_name}' must be a string or a list of strings, got {_type_name(value)} {value!r}; "
                               "write each as text in quotes.")
    return list(items)


def _probe_lists(inputs: Any, name: str, n: int) -> list[list[PromptAnswer]]:
    """EasyEdit's ``{"kind": {"prompt": [...], "ground_truth": [...]}}`` → each prompt's probes. A prompt's list of
    probes and its list of answers must be as long as each other (or one answer for all)."""
    out: list[list[PromptAnswer]] = [[] for _ in range(n)]
    if inputs is None:
        return out
    if not isinstance(inputs, dict):
        raise RequestTypeError(f"'{name}' must be a dict of kind → {{'prompt': [...], 'ground_truth': [...]}}, "
                               f"got {_type_name(inputs)}.")
    for kind, block in inputs.items():
        if not isinstance(kind, str) or not isinstance(block, dict) or "prompt" not in block or "ground_truth" not in block:
            raise RequestError(f"'{name}[{kind!r}]' must be a dict with keys 'prompt' and 'ground_truth'.")
        ps = _as_list(block["prompt"], n, f"{name}[{kind!r}]['prompt']")
        gs = _as_list(block["ground_truth"], n, f"{name}[{kind!r}]['ground_truth']")
        for i, (p, g) in enumerate(zip(ps, gs)):
            if p is None:
                continue
            where = f"{name}[{kind!r}]"
            p_list, g_list = _texts(p, f"{where}['prompt'][{i}]"), _texts(g, f"{where}['ground_truth'][{i}]")
            if len(g_list) == 1 and len(p_list) > 1:
                g_list = g_list * len(p_list)
            if len(g_list) != len(p_list):
                raise RequestError(f"'{where}' item {i} has {len(p_list)} prompts and {len(g_list)} ground truths; give "
                                   "one answer per prompt (or one answer for all of them).")
            out[i].extend(PromptAnswer(pp, gg, kind) for pp, gg in zip(p_list, g_list))
    return out


def requests_from_lists(
    prompts: Sequence[str] | str,
    target_new: Sequence[str] | str,
    subject: Sequence[str] | str | None = None,
    ground_truth: Sequence[str] | str | None = None,
    rephrase_prompts: Sequence[Any] | str | None = None,
    locality_inputs: Optional[dict] = None,
    portability_inputs: Optional[dict] = None,
) -> list[EditRequest]:
    """Build requests from EasyEdit's parallel-list arguments.

    ``locality_inputs`` / ``portability_inputs`` follow EasyEdit:
    ``{"neighborhood": {"prompt": [...], "ground_truth": [...]}, ...}``, one entry per prompt.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise RequestTypeError(f"'prompts' must be a string or a list of strings, got {_type_name(prompts)} {prompts!r}.")
    prompts = list(prompts)
    n = len(prompts)
    targets = _as_list(target_new, n, "target_new")
    subjects = _as_list(subject, n, "subject")
    truths = _as_list(ground_truth, n, "ground_truth")
    rephrases = _as_list(rephrase_prompts, n, "rephrase_prompts")
    localities = _probe_lists(locality_inputs, "locality_inputs", n)
    portabilities = _probe_lists(portability_inputs, "portability_inputs", n)
    reqs = []
    for i in range(n):
        r = rephrases[i]
        r = () if r is None else tuple(_texts(r, f"rephrase_prompts[{i}]"))
        reqs.append(
            EditRequest(
                prompt=prompts[i], target_new=targets[i], subject=subjects[i], target_true=truths[i],
                rephrase_prompts=r, locality=tuple(localities[i]), portability=tuple(portabilities[i]), case_id=i,
            )
        )
    return reqs


# ---- checks against the loaded model's tokenizer and context (called once the model is loaded) ------------------

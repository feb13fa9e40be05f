"""`EditRequest`: the one record every loader produces and every editor consumes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from .errors import RequestError


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

    def __post_init__(self) -> None:
        where = f"EditRequest(case_id={self.case_id!r})"
        for name in ("prompt", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise RequestError(f"{where}: field '{name}' must be a string, got {type(value).__name__}.")
            if not value.strip():
                raise RequestError(f"{where}: field '{name}' is empty; give the text of the {name.replace('_', ' ')}.")
        for name in ("subject", "target_true"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RequestError(f"{where}: field '{name}' must be a string or None, got {type(value).__name__}.")
        if self.subject is not None and not self.subject.strip():
            raise RequestError(f"{where}: field 'subject' is empty; give the subject or leave it None.")
        if isinstance(self.rephrase_prompts, str):
            raise RequestError(f"{where}: field 'rephrase_prompts' must be a list of strings, not one string; wrap it in a list.")
        object.__setattr__(self, "rephrase_prompts", tuple(self.rephrase_prompts))
        object.__setattr__(self, "locality", tuple(self.locality))
        object.__setattr__(self, "portability", tuple(self.portability))
        for p in self.rephrase_prompts:
            if not isinstance(p, str) or not p.strip():
                raise RequestError(f"{where}: field 'rephrase_prompts' holds {p!r}; every rephrase must be a non-empty string.")
        for name in ("locality", "portability"):
            for item in getattr(self, name):
                if not isinstance(item, PromptAnswer):
                    raise RequestError(f"{where}: field '{name}' must hold PromptAnswer(prompt, answer) items, got {type(item).__name__}.")
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
        return cls(
            prompt=record["prompt"],
            target_new=record["target_new"],
            subject=record.get("subject"),
            target_true=record.get("target_true"),
            rephrase_prompts=tuple(record.get("rephrase_prompts", ())),
            locality=tuple(PromptAnswer(**x) for x in record.get("locality", ())),
            portability=tuple(PromptAnswer(**x) for x in record.get("portability", ())),
            case_id=record.get("case_id"),
        )


def _as_list(value: Any, n: int, field_name: str) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if len(value) != n:
        raise RequestError(f"'{field_name}' has {len(value)} items but 'prompts' has {n}; give one per prompt.")
    return value


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
    prompts = list(prompts)
    n = len(prompts)
    targets = _as_list(target_new, n, "target_new")
    subjects = _as_list(subject, n, "subject")
    truths = _as_list(ground_truth, n, "ground_truth")
    rephrases = _as_list(rephrase_prompts, n, "rephrase_prompts")

    def probes(inputs: Optional[dict], name: str) -> list[list[PromptAnswer]]:
        out: list[list[PromptAnswer]] = [[] for _ in range(n)]
        for kind, block in (inputs or {}).items():
            if not isinstance(block, dict) or "prompt" not in block or "ground_truth" not in block:
                raise RequestError(f"'{name}[{kind!r}]' must be a dict with keys 'prompt' and 'ground_truth'.")
            ps = _as_list(block["prompt"], n, f"{name}[{kind!r}]['prompt']")
            gs = _as_list(block["ground_truth"], n, f"{name}[{kind!r}]['ground_truth']")
            for i, (p, g) in enumerate(zip(ps, gs)):
                if p is None:
                    continue
                p_list = [p] if isinstance(p, str) else list(p)
                g_list = [g] if isinstance(g, str) else list(g)
                if len(g_list) == 1 and len(p_list) > 1:
                    g_list = g_list * len(p_list)
                out[i].extend(PromptAnswer(pp, str(gg), kind) for pp, gg in zip(p_list, g_list))
        return out

    localities = probes(locality_inputs, "locality_inputs")
    portabilities = probes(portability_inputs, "portability_inputs")
    reqs = []
    for i in range(n):
        r = rephrases[i]
        r = () if r is None else ((r,) if isinstance(r, str) else tuple(r))
        reqs.append(
            EditRequest(
                prompt=prompts[i], target_new=targets[i], subject=subjects[i], target_true=truths[i],
                rephrase_prompts=r, locality=tuple(localities[i]), portability=tuple(portabilities[i]), case_id=i,
            )
        )
    return reqs

"""Requests checked against a model's tokenizer before any work: control-token text and prompts longer than the
model's context are refused by name (the request itself is checked for shape in ``requests.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

from ..errors import RequestError
from ..requests import EditRequest
from .teacher_forcing import prompt_ids, target_ids


def _texts(request: EditRequest) -> list[tuple[str, str]]:
    """(field, text) for every text of ``request`` that the model reads or is scored on."""
    out = [("prompt", request.prompt), ("target_new", request.target_new)]
    if request.target_true is not None:
        out.append(("target_true", request.target_true))
    if request.subject is not None:
        out.append(("subject", request.subject))
    out += [(f"rephrase_prompts[{j}]", p) for j, p in enumerate(request.rephrase_prompts)]
    for name in ("locality", "portability"):
        for j, item in enumerate(getattr(request, name)):
            out += [(f"{name}[{j}].prompt", item.prompt), (f"{name}[{j}].answer", item.answer)]
    return out


def _special_tokens(tokenizer) -> list[str]:
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added))
    return sorted((t for t in tokens if isinstance(t, str) and t.strip()), key=len, reverse=True)


def check_special_tokens(requests: Sequence[EditRequest], tokenizer) -> None:
    """Refuse requests whose text holds a special (control) token's text, e.g. ``<|im_end|>``: the tokenizer reads
    it as the one control token, not as the characters, so the edit would silently teach something else."""
    specials = _special_tokens(tokenizer)
    if not specials:
        return
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    for i, request in enumerate(requests):
        for field_name, text in _texts(request):
            for token in specials:
                if token in text:
                    raise RequestError(
                        f"request {i} (case_id={request.case_id!r}): field '{field_name}' {text!r} contains {token!r}, which "
                        f"the tokenizer of {name} reads as one special (control) token, not as text; remove it from the "
                        "data or spell it differently (e.g. with a space inside)."
                    )


def context_length(config) -> Optional[int]:
    """The most positions a model reads (``max_position_embeddings`` or ``n_positions``); None when it names none."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_context_length(requests: Sequence[EditRequest], loaded) -> None:
    """Refuse requests whose prompt + target (any probe included) is longer than the model's context, measured with
    the tokens the editors and metrics build (models/teacher_forcing.py). Skipped for a model whose config names no
    context length, and for encoder-decoder models (prompt and target are read apart)."""
    config = getattr(loaded.model, "config", None)
    limit = context_length(config)
    if limit is None or getattr(config, "is_encoder_decoder", False):
        return

    tokenizer = loaded.tokenizer
    for i, r in enumerate(requests):
        pairs = [("prompt", r.prompt, "target_new", r.target_new)]
        if r.target_true is not None:
            pairs.append(("prompt", r.prompt, "target_true", r.target_true))
        pairs += [(f"rephrase_prompts[{j}]", p, "target_new", r.target_new) for j, p in enumerate(r.rephrase_prompts)]
        for name in ("locality", "portability"):
            pairs += [(f"{name}[{j}].prompt", x.prompt, f"{name}[{j}].answer", x.answer) for j, x in enumerate(getattr(r, name))]
        for p_field, prompt, t_field, target in pairs:
            n = len(prompt_ids(tokenizer, prompt)) + len(target_ids(tokenizer, target))
            if n > limit:
                raise RequestError(
                    f"request {i} (case_id={r.case_id!r}): field '{p_field}' followed by field '{t_field}' is {n} tokens, "
                    f"longer than the {limit} positions {loaded.name} reads; shorten the {p_field.split('[')[0]} or use a "
                    "model with a longer context."
                )

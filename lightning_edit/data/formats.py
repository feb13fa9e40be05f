"""One converter per benchmark format (ZsRE, CounterFact in EasyEdit's and ROME's layouts, KnowEdit, MQuAKE,
known_1000, lightning-edit's own) from a raw JSON record to ``EditRequest``s; the format is detected from the keys.

They run inside ``datasets.Dataset.map`` (lightning_edit/data/records.py); each raises ``RequestTypeError`` for a field of
the wrong shape (always refused) and ``RequestError`` for an unusable record (skipped with a warning by default).
"""
from __future__ import annotations

import json
from typing import Callable, Optional

from ..errors import DataError, RequestTypeError
from ..requests import EditRequest, PromptAnswer, _type_name

def _first_answer(value, field: str = "answer") -> str:
    """KnowEdit answers come as a string, a list, or a list of alias lists: take the first ("" when absent)."""
    while isinstance(value, list):
        if not value:
            return ""
        value = value[0]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestTypeError(f"field '{field}' must be a string or a list of strings, got {_type_name(value)} {value!r}; "
                               "write it as text in quotes.")
    return value


def _string(rec: dict, key: str, optional: bool = False):
    """``rec[key]``, checked to be a string (None allowed when ``optional``)."""
    value = rec.get(key) if optional else rec[key]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RequestTypeError(f"field '{key}' must be a string, got {_type_name(value)} {value!r}; write it as text in quotes.")
    return value


def _string_list(rec: dict, key: str) -> tuple[str, ...]:
    """``rec[key]`` where the format requires a list of strings: one string is refused, not split into letters."""
    value = rec.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        raise RequestTypeError(f"field '{key}' must be a list of strings, got one string {value!r}; wrap it in a list: [{json.dumps(value)}].")
    if not isinstance(value, list):
        raise RequestTypeError(f"field '{key}' must be a list of strings, got {_type_name(value)}.")
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise RequestTypeError(f"field '{key}[{j}]' must be a string, got {_type_name(item)} {item!r}.")
    return tuple(value)


def _probes(block: dict, field: str, default_kind: str = "") -> tuple[PromptAnswer, ...]:
    if block is None:
        return ()
    if not isinstance(block, dict):
        raise RequestTypeError(f"field '{field}' must be an object mapping a kind to probes "
                               f"({{\"kind\": [{{\"prompt\": ..., \"ground_truth\": ...}}]}}), got {_type_name(block)}.")
    out = []
    for kind, items in block.items():
        for j, item in enumerate(items if isinstance(items, list) else [items]):
            where = f"{field}[{kind!r}][{j}]"
            if not isinstance(item, dict) or "prompt" not in item:
                raise RequestTypeError(f"field '{where}' must be an object with keys 'prompt' and 'ground_truth', got "
                                       f"{sorted(item) if isinstance(item, dict) else _type_name(item)}.")
            prompts = item["prompt"] if isinstance(item["prompt"], list) else [item["prompt"]]
            for p in prompts:
                if p is not None and not isinstance(p, str):
                    raise RequestTypeError(f"field '{where}.prompt' must be a string or a list of strings, got {_type_name(p)} {p!r}.")
            answer = _first_answer(item.get("ground_truth", item.get("answer")), f"{where}.ground_truth")
            out.extend(PromptAnswer(p, answer, kind or default_kind) for p in prompts if p and answer)
    return tuple(out)


def _zsre(rec: dict, i: int) -> EditRequest:
    port = rec.get("portability") or {}
    if not isinstance(port, dict):
        raise RequestTypeError(f"field 'portability' must be an object with keys 'New Question' and 'New Answer', got {_type_name(port)}.")
    portability = ()
    if port.get("New Question") and port.get("New Answer"):
        portability = (PromptAnswer(port["New Question"], port["New Answer"], "one_hop"),)
    return EditRequest(
        prompt=rec["src"], target_new=rec["alt"], subject=rec.get("subject"),
        target_true=_first_answer(rec.get("answers"), "answers") or _string(rec, "pred", optional=True),
        rephrase_prompts=(rec["rephrase"],) if rec.get("rephrase") else (),
        locality=(PromptAnswer(rec["loc"], rec["loc_ans"], "nq"),) if rec.get("loc") else (),
        portability=portability, case_id=rec.get("case_id", i),
    )


def _counterfact_easyedit(rec: dict, i: int) -> EditRequest:
    return EditRequest(
        prompt=rec["prompt"], target_new=rec["target_new"], subject=rec.get("subject"), target_true=rec.get("ground_truth"),
        rephrase_prompts=(rec["rephrase_prompt"],) if rec.get("rephrase_prompt") else (),
        locality=(PromptAnswer(rec["locality_prompt"], rec["locality_ground_truth"], "neighborhood"),) if rec.get("locality_prompt") else (),
        case_id=rec.get("case_id", i),
    )


def _rome_rewrite(rw: dict) -> dict:
    if not isinstance(rw, dict):
        raise RequestTypeError(f"field 'requested_rewrite' must hold objects with keys 'prompt', 'subject', 'target_new', "
                               f"'target_true', got {_type_name(rw)}.")
    for key in ("target_new", "target_true"):
        if not isinstance(rw[key], dict):
            raise RequestTypeError(f"field 'requested_rewrite.{key}' must be an object {{\"str\": \"...\"}}, got {_type_name(rw[key])}.")
    _string(rw, "prompt")
    _string(rw, "subject")
    # ROME's prompts hold the subject's place as "{}": a plain replace, never str.format, which would read "{1}" or
    # "{:999999999}" in a data file as a field to look up or a width to allocate
    return dict(prompt=rw["prompt"].replace("{}", rw["subject"]),
                target_new=rw["target_new"]["str"], target_true=rw["target_true"]["str"], subject=rw["subject"])


def _rome_id(rw: dict, key: str) -> Optional[str]:
    """ROME's ids (relation P..., object Q...) name where the consistency references are filed."""
    value = rw.get("relation_id") if key == "relation_id" else rw[key].get("id")
    if value is not None and not isinstance(value, str):
        raise RequestTypeError(f"field 'requested_rewrite.{key}' id must be a string such as \"Q150\", got {_type_name(value)}.")
    return value


def _counterfact_rome(rec: dict, i: int) -> EditRequest:
    """ROME's CounterFact record, every prompt kept: neighbourhood prompts (other subjects that share the true
    object; scored as ROME scores them), attribute prompts (other subjects that truly have the new object),
    generation prompts (free text, scored for fluency and consistency)."""
    rw = _rome_rewrite(rec["requested_rewrite"])
    locality = tuple(PromptAnswer(p, rw["target_true"], "neighborhood") for p in _string_list(rec, "neighborhood_prompts"))
    locality += tuple(PromptAnswer(p, rw["target_new"], "attribute") for p in _string_list(rec, "attribute_prompts"))
    raw = rec["requested_rewrite"]
    return EditRequest(**rw, rephrase_prompts=_string_list(rec, "paraphrase_prompts"), locality=locality,
                       case_id=rec.get("case_id", i), generation_prompts=_string_list(rec, "generation_prompts"),
                       relation_id=_rome_id(raw, "relation_id"), target_new_id=_rome_id(raw, "target_new"))


def _knowedit(rec: dict, i: int) -> EditRequest:
    if "text" in rec and "labels" in rec:  # WikiBio: continue a biography with a new sentence
        return EditRequest(prompt=rec["text"], target_new=rec["labels"], subject=rec.get("concept"),
                           locality=_probes(rec.get("locality"), "locality"), case_id=rec.get("case_id", i))
    return EditRequest(
        prompt=rec["prompt"], target_new=_first_answer(rec["target_new"], "target_new"), subject=rec.get("subject"),
        target_true=_first_answer(rec["ground_truth"], "ground_truth") if rec.get("ground_truth") else None,
        # KnowEdit's 'rephrase' is one string or a list of them, by design
        rephrase_prompts=_string_list(rec, "rephrase") if isinstance(rec.get("rephrase"), list) else ((rec["rephrase"],) if rec.get("rephrase") else ()),
        locality=_probes(rec.get("locality"), "locality"), portability=_probes(rec.get("portability"), "portability"),
        case_id=rec.get("case_id", i),
    )


def _mquake(rec: dict, i: int) -> list[EditRequest]:
    """One request per rewrite of the case; the multi-hop questions (answered by new_answer once every
    rewrite of the case is applied) are the portability probes of each."""
    port = tuple(PromptAnswer(q, rec["new_answer"], "multi_hop") for q in _string_list(rec, "questions"))
    out = []
    for j, rw in enumerate(rec["requested_rewrite"]):
        if isinstance(rw, dict) and rw.get("question") is not None:
            _string(rw, "question")
        out.append(EditRequest(**_rome_rewrite(rw), rephrase_prompts=(rw["question"],) if rw.get("question") else (),
                               portability=port, case_id=f"{rec.get('case_id', i)}-{j}"))
    return out


def _known(rec: dict, i: int) -> EditRequest:
    """A fact the model already knows (for tracing and sanity checks): target_new = target_true = attribute."""
    return EditRequest(prompt=rec["prompt"], target_new=rec["attribute"], target_true=rec["attribute"],
                       subject=rec["subject"], case_id=rec.get("known_id", i))


def _native(rec: dict, i: int) -> EditRequest:
    return EditRequest.from_dict({"case_id": i, **rec})


FORMATS: dict[str, tuple[Callable[[dict], bool], Callable]] = {
    "zsre": (lambda r: {"src", "alt", "rephrase"} <= r.keys(), _zsre),
    "counterfact-rome": (lambda r: isinstance(r.get("requested_rewrite"), dict), _counterfact_rome),
    "mquake": (lambda r: isinstance(r.get("requested_rewrite"), list), _mquake),
    "counterfact-easyedit": (lambda r: {"prompt", "target_new", "locality_prompt"} <= r.keys(), _counterfact_easyedit),
    "known_1000": (lambda r: {"known_id", "attribute", "template"} <= r.keys(), _known),
    "lightning-edit": (lambda r: "target_new" in r and ("rephrase_prompts" in r or "target_true" in r), _native),
    "knowedit": (lambda r: ("prompt" in r and "target_new" in r) or {"text", "labels", "concept"} <= r.keys(), _knowedit),
}


def detect_format(record: dict) -> str:
    if not isinstance(record, dict):
        raise DataError(f"a record must be a JSON object {{\"prompt\": ..., \"target_new\": ...}}, got {_type_name(record)}")
    for name, (matches, _) in FORMATS.items():
        if matches(record):
            return name
    missing = [k for k in ("prompt", "target_new") if k not in record]
    hint = f"; field(s) {missing} missing (a lightning-edit record needs 'prompt' and 'target_new')" if missing else ""
    raise DataError(f"record with keys {sorted(record)} matches no known format ({', '.join(FORMATS)}){hint}")

"""Loaders for every benchmark format; the format is detected from the records' keys.

Data live outside the repository: ``--data-dir``, else ``$LIGHTNING_EDIT_DATA``, else ``../shared/data``
beside the project in a checkout, else ``~/.cache/lightning-edit/data`` for an installed package
(lightning_edit/paths.py). Named datasets map to files under that directory; any JSON file path works too.
"""
from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from ..errors import DataError, RequestError
from ..paths import DATA_ENV, DEMO_PATH, default_data_root
from ..requests import EditRequest, PromptAnswer

log = logging.getLogger(__name__)

# name → path relative to the data directory ("demo" ships with the package: DEMO_PATH, lightning_edit/data/demo.json)
DATASETS: dict[str, str] = {
    "zsre": "zsre/zsre_mend_eval_portability_gpt4.json",
    "zsre-train": "zsre/zsre_mend_train-1k.json",
    "counterfact": "counterfact/counterfact-edit.json",
    "counterfact-train": "counterfact/counterfact-train.json",
    "counterfact-rome": "counterfact/cf_preview.json",
    "knowedit-counterfact": "knowedit/wiki_counterfact/train_cf.json",
    "knowedit-recent": "knowedit/wiki_recent/recent_train.json",
    "knowedit-wikibio": "knowedit/WikiBio/wikibio-train-all.json",
    "mquake": "mquake/AKEW-MQuAKE-CF.json",
    "known_1000": "known_1000/known_1000.json",
}
# name → download group of `lightning-edit data get` (lightning_edit/data/fetch.py holds the pinned files)
DATASET_GROUPS: dict[str, str] = {
    "zsre": "zsre", "zsre-train": "zsre",
    "counterfact": "counterfact", "counterfact-train": "counterfact", "counterfact-rome": "counterfact",
    "knowedit-counterfact": "knowedit", "knowedit-recent": "knowedit", "knowedit-wikibio": "knowedit",
    "mquake": "mquake",
    "known_1000": "known_1000",
}


def get_command(group: str, data_dir: Optional[Union[str, Path]] = None) -> str:
    """The command that downloads ``group`` into ``data_dir`` (quoted so it can be pasted into a shell)."""
    where = f" --data-dir {shlex.quote(str(data_dir))}" if data_dir else ""
    return f"lightning-edit data get {group}{where} (or: python edit.py data get {group}{where})"


def default_data_dir(data_dir: Optional[Union[str, Path]] = None) -> Path:
    """``data_dir`` if given; else ``$LIGHTNING_EDIT_DATA``; else ``../shared/data`` beside the project when running
    from a checkout (the package's parent holds edit.py and setup.cfg); else ``~/.cache/lightning-edit/data``
    (honouring ``$XDG_CACHE_HOME``) for an installed package. See lightning_edit/paths.py."""
    if data_dir:
        return Path(data_dir)
    return default_data_root()


def resolve_dataset_path(name_or_path: str, data_dir: Optional[Union[str, Path]] = None) -> Path:
    if name_or_path == "demo":
        return DEMO_PATH
    if name_or_path in DATASETS:
        root = default_data_dir(data_dir)
        path = root / DATASETS[name_or_path]
        if not path.exists():
            raise DataError(
                f"dataset {name_or_path!r}: looked for {path} and it is not there. "
                f"Get it with: {get_command(DATASET_GROUPS[name_or_path], root)}; "
                f"or point --data-dir (or ${DATA_ENV}) at the folder holding {DATASETS[name_or_path]} "
                f"(default: ../shared/data beside a checkout, else ~/.cache/lightning-edit/data)."
            )
        return path
    path = Path(name_or_path)
    if path.exists():
        return path
    raise DataError(
        f"dataset {name_or_path!r} is neither a known name ({', '.join(['demo', *DATASETS])}) nor an existing file "
        f"(`lightning-edit data list` shows what can be downloaded)"
    )


# ---- one converter per format -------------------------------------------------------------------

def _first_answer(value) -> str:
    """KnowEdit answers come as a string, a list, or a list of alias lists: take the first."""
    while isinstance(value, list):
        if not value:
            return ""
        value = value[0]
    return str(value)


def _probes(block: dict, default_kind: str = "") -> tuple[PromptAnswer, ...]:
    out = []
    for kind, items in (block or {}).items():
        for item in items if isinstance(items, list) else [items]:
            prompts = item["prompt"] if isinstance(item["prompt"], list) else [item["prompt"]]
            answer = _first_answer(item.get("ground_truth", item.get("answer")))
            out.extend(PromptAnswer(p, answer, kind or default_kind) for p in prompts if p and answer)
    return tuple(out)


def _zsre(rec: dict, i: int) -> EditRequest:
    port = rec.get("portability") or {}
    portability = ()
    if port.get("New Question") and port.get("New Answer"):
        portability = (PromptAnswer(port["New Question"], port["New Answer"], "one_hop"),)
    return EditRequest(
        prompt=rec["src"], target_new=rec["alt"], subject=rec.get("subject"),
        target_true=_first_answer(rec.get("answers")) or rec.get("pred"),
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
    return dict(prompt=rw["prompt"].format(rw["subject"]) if "{}" in rw["prompt"] else rw["prompt"],
                target_new=rw["target_new"]["str"], target_true=rw["target_true"]["str"], subject=rw["subject"])


def _counterfact_rome(rec: dict, i: int) -> EditRequest:
    rw = _rome_rewrite(rec["requested_rewrite"])
    locality = tuple(PromptAnswer(p, rw["target_true"], "neighborhood") for p in rec.get("neighborhood_prompts", []))
    # attribute prompts: other subjects that truly have target_new; the edit must not disturb them
    locality += tuple(PromptAnswer(p, rw["target_new"], "attribute") for p in rec.get("attribute_prompts", []))
    return EditRequest(**rw, rephrase_prompts=tuple(rec.get("paraphrase_prompts", [])), locality=locality, case_id=rec.get("case_id", i))


def _knowedit(rec: dict, i: int) -> EditRequest:
    if "text" in rec and "labels" in rec:  # WikiBio: continue a biography with a new sentence
        return EditRequest(prompt=rec["text"], target_new=rec["labels"], subject=rec.get("concept"),
                           locality=_probes(rec.get("locality")), case_id=rec.get("case_id", i))
    return EditRequest(
        prompt=rec["prompt"], target_new=_first_answer(rec["target_new"]), subject=rec.get("subject"),
        target_true=_first_answer(rec["ground_truth"]) if rec.get("ground_truth") else None,
        rephrase_prompts=tuple(rec.get("rephrase", []) if isinstance(rec.get("rephrase"), list) else ([rec["rephrase"]] if rec.get("rephrase") else [])),
        locality=_probes(rec.get("locality")), portability=_probes(rec.get("portability")), case_id=rec.get("case_id", i),
    )


def _mquake(rec: dict, i: int) -> list[EditRequest]:
    """One request per rewrite of the case; the multi-hop questions (answered by new_answer once every
    rewrite of the case is applied) are the portability probes of each."""
    port = tuple(PromptAnswer(q, rec["new_answer"], "multi_hop") for q in rec.get("questions", []))
    out = []
    for j, rw in enumerate(rec["requested_rewrite"]):
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
    for name, (matches, _) in FORMATS.items():
        if matches(record):
            return name
    raise DataError(f"record with keys {sorted(record)} matches no known format ({', '.join(FORMATS)})")


def convert_records(records: Iterable[dict], source: str = "<records>", on_invalid: str = "skip") -> list[EditRequest]:
    """Convert raw records. Records that are unusable as edits (e.g. an empty target: ZsRE's train file has
    one) are skipped with a warning naming them (``on_invalid="skip"``) or raise (``"raise"``)."""
    if on_invalid not in ("skip", "raise"):
        raise ValueError("on_invalid must be 'skip' or 'raise'")
    records = list(records)
    if not records:
        return []
    fmt = detect_format(records[0])
    convert = FORMATS[fmt][1]
    out: list[EditRequest] = []
    skipped: list[str] = []
    for i, rec in enumerate(records):
        try:
            made = convert(rec, i)
        except KeyError as err:
            raise DataError(f"{source}: record {i} (format {fmt}) lacks field {err}") from err
        except RequestError as err:
            if on_invalid == "raise":
                raise DataError(f"{source}: record {i}: {err}") from err
            skipped.append(f"record {i}: {err}")
            continue
        out.extend(made if isinstance(made, list) else [made])
    if skipped:
        log.warning("%s: skipped %d unusable record(s); first: %s", source, len(skipped), skipped[0])
    return out


def load_requests(name_or_path: str, n: Optional[int] = None, data_dir: Optional[Union[str, Path]] = None, offset: int = 0,
                  on_invalid: str = "skip") -> list[EditRequest]:
    """Requests from a named dataset or a JSON (list or JSON-lines) file; ``n`` first after ``offset``."""
    path = resolve_dataset_path(name_or_path, data_dir)
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is neither JSON nor JSON lines: {err}") from err
    if isinstance(records, dict):
        records = records.get("data") or records.get("requests") or [records]
    if n is not None:
        records = records[offset: offset + n]
    elif offset:
        records = records[offset:]
    return convert_records(records, source=str(path), on_invalid=on_invalid)

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

from ..errors import DataError, RequestError, RequestTypeError
from ..paths import DATA_ENV, DEMO_PATH, default_data_root
from ..requests import EditRequest, PromptAnswer, _type_name

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
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".json", ".jsonl"))[:3]
        hint = f" such as {path / found[0]}" if found else ""
        raise DataError(f"--data {name_or_path}: is a folder, not a file; give a JSON or JSON-lines file{hint} "
                        f"(or a known name: {', '.join(['demo', *DATASETS])})")
    if path.exists():
        return path
    raise DataError(
        f"dataset {name_or_path!r} is neither a known name ({', '.join(['demo', *DATASETS])}) nor an existing file "
        f"(`lightning-edit data list` shows what can be downloaded)"
    )


# ---- one converter per format -------------------------------------------------------------------

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
    return dict(prompt=rw["prompt"].format(rw["subject"]) if "{}" in rw["prompt"] else rw["prompt"],
                target_new=rw["target_new"]["str"], target_true=rw["target_true"]["str"], subject=rw["subject"])


def _counterfact_rome(rec: dict, i: int) -> EditRequest:
    rw = _rome_rewrite(rec["requested_rewrite"])
    locality = tuple(PromptAnswer(p, rw["target_true"], "neighborhood") for p in _string_list(rec, "neighborhood_prompts"))
    # attribute prompts: other subjects that truly have target_new; the edit must not disturb them
    locality += tuple(PromptAnswer(p, rw["target_new"], "attribute") for p in _string_list(rec, "attribute_prompts"))
    return EditRequest(**rw, rephrase_prompts=_string_list(rec, "paraphrase_prompts"), locality=locality, case_id=rec.get("case_id", i))


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
    raise DataError(f"record with keys {sorted(record)} matches no known format ({', '.join(FORMATS)})")


def convert_records(records: Iterable[dict], source: str = "<records>", on_invalid: str = "skip", start: int = 0) -> list[EditRequest]:
    """Convert raw records. Records that are unusable as edits (e.g. an empty target: ZsRE's train file has
    one) are skipped with a warning naming them (``on_invalid="skip"``) or raise (``"raise"``). A field of the wrong
    type (a number for a prompt, one string where a list is required) always raises: the file is malformed.
    ``start``: the index in the file of the first record (for messages)."""
    if on_invalid not in ("skip", "raise"):
        raise ValueError("on_invalid must be 'skip' or 'raise'")
    records = list(records)
    if not records:
        return []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{source}: record {start + i} is {_type_name(rec)}, not an object; every record must be a JSON "
                            'object such as {"prompt": "The capital of France is", "target_new": "Lyon", "target_true": "Paris"}')
    try:
        fmt = detect_format(records[0])
    except DataError as err:
        raise DataError(f"{source}: record {start}: {err}") from err
    convert = FORMATS[fmt][1]
    out: list[EditRequest] = []
    skipped: list[str] = []
    for i, rec in enumerate(records):
        index = start + i
        try:
            made = convert(rec, i)
        except KeyError as err:
            raise DataError(f"{source}: record {index} (format {fmt}) lacks field {err}; add it "
                            f"(the format was detected from record {start}'s keys)") from err
        except RequestTypeError as err:
            raise DataError(f"{source}: record {index} (format {fmt}): {err}") from err
        except RequestError as err:
            if on_invalid == "raise":
                raise DataError(f"{source}: record {index}: {err}") from err
            skipped.append(f"record {index}: {err}")
            continue
        except (TypeError, AttributeError) as err:  # a field of a shape no check above foresaw
            raise DataError(f"{source}: record {index} (format {fmt}) has a field of the wrong type ({err}); "
                            f"compare it with record {start} or with lightning_edit/data/demo.json") from err
        out.extend(made if isinstance(made, list) else [made])
    if skipped:
        log.warning("%s: skipped %d unusable record(s); first: %s", source, len(skipped), skipped[0])
    return out


def read_records(path: Path) -> list:
    """The records of a JSON file (a list, or an object holding the list under "data" or "requests") or a JSON-lines
    file, read as strict UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # strict: an invalid byte is an error, not a replacement character
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: is not valid UTF-8: byte {raw[err.start:err.start + 1]!r} at offset {err.start} (line {line}) "
                        f"{err.reason}; save the file as UTF-8") from err
    if not text.strip():
        raise DataError(f"{path}: is empty; give a JSON list of records or JSON lines, one record per line")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as whole_err:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        records = []
        for n, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                where = f"line {whole_err.lineno} column {whole_err.colno}" if len(lines) <= 1 else f"line {n}"
                raise DataError(f"{path}: is neither JSON nor JSON lines ({where}: {err.msg}); fix the syntax there") from err
    if isinstance(records, dict):
        key = next((k for k in ("data", "requests") if k in records), None)
        if key is not None:
            if not isinstance(records[key], list):
                raise DataError(f"{path}: field '{key}' must be a list of records, got {_type_name(records[key])}; "
                                'write "' + key + '": [{"prompt": ..., "target_new": ...}, ...]')
            records = records[key]
        elif any(matches(records) for matches, _ in FORMATS.values()):
            records = [records]  # one record (a JSON-lines file of one line)
        else:
            raise DataError(f"{path}: the top level is one object (keys {sorted(records)[:6]}) that is no record of a known "
                            f"format ({', '.join(FORMATS)}); put the records in a list: "
                            '[{"prompt": ..., "target_new": ...}, ...] (or under a "data" key)')
    if not isinstance(records, list):
        raise DataError(f"{path}: the top level is {_type_name(records)}, not a list of records; write "
                        '[{"prompt": ..., "target_new": ...}, ...] or one JSON object per line')
    return records


def load_requests(name_or_path: str, n: Optional[int] = None, data_dir: Optional[Union[str, Path]] = None, offset: int = 0,
                  on_invalid: str = "skip") -> list[EditRequest]:
    """Requests from a named dataset or a JSON (list or JSON-lines) file; ``n`` first after ``offset``."""
    path = resolve_dataset_path(name_or_path, data_dir)
    try:
        records = read_records(path)
    except DataError:
        raise
    except IsADirectoryError as err:
        raise DataError(f"{path}: is a folder, not a file; give a JSON or JSON-lines file") from err
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    if n is not None:
        records = records[offset: offset + n]
    elif offset:
        records = records[offset:]
    return convert_records(records, source=str(path), on_invalid=on_invalid, start=offset)

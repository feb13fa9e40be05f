"""Records in, ``EditRequest``s out, and the data layer's ``datasets.Dataset`` of typed request rows.

Benchmark records are heterogeneous (KnowEdit's answer is a string in one record and a list of alias lists in the
next; a user's file may hold a number where text belongs, and must get an error naming that record and field), which
Arrow's typed columns cannot hold as they are. So each record is converted once, as parsed from its file, by the
converters of lightning_edit/data/formats.py (``convert_requests``: one parse, one ``EditRequest`` per request);
``requests_dataset`` puts those requests in the typed ``REQUEST_FEATURES`` columns for whoever wants a ``Dataset``
(the DataModules of training), and ``requests_from_dataset`` builds the ``EditRequest``s back from one.

Every dataset here lives in memory (``from_dict``; ``map``/``select``/``train_test_split`` of an in-memory dataset stay
in memory), so nothing is written to the datasets cache in the user's home.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import pyarrow as pa
from datasets import Dataset, Features, Value
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from ..errors import DataError, RequestError, RequestTypeError, docs_link
from ..requests import EditRequest, PromptAnswer, _type_name
from .formats import FORMATS, detect_format

log = logging.getLogger(__name__)

_PROBE = {"prompt": Value("string"), "answer": Value("string"), "kind": Value("string")}
REQUEST_FEATURES = Features({
    "prompt": Value("string"), "target_new": Value("string"), "subject": Value("string"), "target_true": Value("string"),
    # [feature]: a list of it (datasets 4's List; a plain list also means that to datasets 2.18)
    "rephrase_prompts": [Value("string")], "locality": [_PROBE], "portability": [_PROBE],
    "case_id": Value("string"),  # JSON text of the case id: an int in one file, a string ("3-0") in another
    "record_index": Value("int64"),  # the record's index in its file (MQuAKE gives several rows per record)
    "generation_prompts": [Value("string")], "relation_id": Value("string"), "target_new_id": Value("string"),
})
OPTIONAL_COLUMNS = {"record_index", "generation_prompts", "relation_id", "target_new_id"}  # ROME's CounterFact only
_SCHEMA = REQUEST_FEATURES.arrow_schema


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No "Map: 100%" bar from datasets: a loader's caller shows one error line or its own progress."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _probe_rows(probes: Sequence[PromptAnswer]) -> list[dict]:
    return [{"prompt": p.prompt, "answer": p.answer, "kind": p.kind} for p in probes]


def request_row(request: EditRequest, record_index: int) -> dict:
    """One ``REQUEST_FEATURES`` row (by hand: ``dataclasses.asdict`` took 60% of loading CounterFact)."""
    return {"prompt": request.prompt, "target_new": request.target_new, "subject": request.subject,
            "target_true": request.target_true, "rephrase_prompts": list(request.rephrase_prompts),
            "locality": _probe_rows(request.locality), "portability": _probe_rows(request.portability),
            "case_id": json.dumps(request.case_id, default=str), "record_index": record_index,
            "generation_prompts": list(request.generation_prompts), "relation_id": request.relation_id,
            "target_new_id": request.target_new_id}


def convert_requests(records: Sequence, source: str = "<records>", on_invalid: str = "skip",
                     start: int = 0) -> list[tuple[int, EditRequest]]:
    """``(record index in the file, request)`` for every request of ``records`` (the file's records ``start``,
    ``start + 1``, ..., as parsed). Records unusable as edits (an empty target: ZsRE's train file has one) are
    skipped with a warning naming them (``on_invalid="skip"``) or raise (``"raise"``); a field of the wrong type
    always raises a ``DataError`` naming the record and field."""
    if on_invalid not in ("skip", "raise"):
        raise ValueError("on_invalid must be 'skip' or 'raise'")
    if not records:
        return []
    skipped: list[str] = []
    try:
        pairs = _convert(list(records), source, on_invalid, start, skipped)
    except RecursionError:
        raise DataError(f"{source}: a record is nested too deeply (lists or objects inside each other more than "
                        "a thousand levels); a request record is a flat object") from None
    if skipped:
        log.warning("%s: skipped %d unusable record(s); first: %s", source, len(skipped), skipped[0])
    return pairs


def _convert(records: list, source: str, on_invalid: str, start: int, skipped: list[str]) -> list[tuple[int, EditRequest]]:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DataError(f"{source}: record {start + i} is {_type_name(rec)}, not an object; every record must be a JSON "
                            'object such as {"prompt": "The capital of France is", "target_new": "Lyon", "target_true": "Paris"}')
    try:
        fmt = detect_format(records[0])
    except DataError as err:
        raise DataError(f"{source}: record {start}: {err}") from err
    convert = FORMATS[fmt][1]
    pairs: list[tuple[int, EditRequest]] = []
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
        pairs.extend((index, r) for r in (made if isinstance(made, list) else [made]))
    return pairs


def requests_dataset(pairs: Sequence[tuple[int, EditRequest]]) -> Dataset:
    """``(record index, request)`` pairs (``convert_requests``) as a ``REQUEST_FEATURES`` dataset, in memory."""
    table = pa.Table.from_pylist([request_row(r, index) for index, r in pairs], schema=_SCHEMA)
    with quiet_progress():
        return Dataset(table).cast(REQUEST_FEATURES)


def _probes(rows: list[dict]) -> tuple[PromptAnswer, ...]:
    return tuple(PromptAnswer(row["prompt"], row["answer"], row["kind"] or "") for row in rows)


def requests_from_dataset(dataset: Dataset) -> list[EditRequest]:
    """The ``EditRequest``s of a ``REQUEST_FEATURES`` dataset (checked again by ``EditRequest`` itself)."""
    missing = sorted(set(REQUEST_FEATURES) - OPTIONAL_COLUMNS - set(dataset.column_names))
    if missing:
        raise DataError(f"a request dataset needs columns {missing} as well (REQUEST_FEATURES in lightning_edit/data/records.py; "
                        f"{docs_link('guides/data.md', 'the-data-layer-datasets')})")
    return [EditRequest(prompt=row["prompt"], target_new=row["target_new"], subject=row["subject"], target_true=row["target_true"],
                        rephrase_prompts=row["rephrase_prompts"] or (), locality=_probes(row["locality"] or []),
                        portability=_probes(row["portability"] or []), case_id=json.loads(row["case_id"]),
                        generation_prompts=row.get("generation_prompts") or (), relation_id=row.get("relation_id"),
                        target_new_id=row.get("target_new_id"))
            for row in dataset.to_list()]

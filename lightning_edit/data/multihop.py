"""MQuAKE cases kept whole for the multi-hop protocol (lightning_edit/evaluation/multihop.py).

The request loaders (loaders.py) turn one MQuAKE record into one ``EditRequest`` per requested rewrite, which is
what editors see; the multi-hop protocol also needs the case itself: which requests belong together (they are
applied at once), its multi-hop questions, and the new answer with its aliases (any of them counts, as in MQuAKE).
The requests go through the same converter and ``datasets`` ``.map`` as every other file (records.py); the case's
other fields are read from the same records here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataError, RequestError, RequestTypeError
from ..requests import EditRequest
from .formats import _string, _string_list, detect_format
from .loaders import read_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultiHopCase:
    """One MQuAKE case: ``requests`` are applied together; the case is answered if, after them, the model answers
    any of ``questions`` with any of ``new_answers`` (new_answer first, then its aliases)."""

    case_id: Any
    requests: tuple[EditRequest, ...]
    questions: tuple[str, ...]
    new_answers: tuple[str, ...]
    old_answers: tuple[str, ...] = ()  # the answer before the edits, then its aliases (empty when the file has none)

    def __post_init__(self) -> None:
        where = f"MultiHopCase(case_id={self.case_id!r})"
        if not self.requests:
            raise RequestError(f"{where}: field 'requested_rewrite' is empty; a case needs at least one edit.")
        if not self.questions:
            raise RequestError(f"{where}: field 'questions' is empty; a case needs at least one multi-hop question.")
        if not self.new_answers:
            raise RequestError(f"{where}: field 'new_answer' is empty; give the answer the questions should have after the edits.")


def _answers(rec: dict, key: str, alias_key: str) -> tuple[str, ...]:
    """``rec[key]`` then its aliases, stripped, empty ones and repeats dropped (order kept)."""
    first = _string(rec, key, optional=True) or ""
    return tuple(dict.fromkeys(a.strip() for a in (first, *_string_list(rec, alias_key)) if a.strip()))


def case_from_record(rec: dict, requests: tuple[EditRequest, ...], index: int) -> MultiHopCase:
    """The case of one MQuAKE record whose rewrites were converted to ``requests``."""
    if "new_answer" not in rec:
        raise KeyError("new_answer")
    return MultiHopCase(case_id=rec.get("case_id", index), requests=requests, questions=_string_list(rec, "questions"),
                        new_answers=_answers(rec, "new_answer", "new_answer_alias"),
                        old_answers=_answers(rec, "answer", "answer_alias"))


def load_multihop_cases(name_or_path: str, n: Optional[int] = None, data_dir: Optional[Union[str, Path]] = None,
                        offset: int = 0, on_invalid: str = "skip") -> list[MultiHopCase]:
    """The MQuAKE cases of a named dataset (``mquake``) or an MQuAKE-format file: ``n`` records after ``offset``.

    A record whose rewrites cannot be edits is skipped with a warning (``on_invalid="skip"``) or raises
    (``"raise"``), as in ``load_requests``; a field of the wrong type always raises ``DataError`` naming it."""
    from .records import convert_requests

    source, records = read_source(name_or_path, data_dir, n, offset, unit="cases")
    chosen = records[offset: None if n is None else offset + n]
    if not chosen:
        raise DataError(f"{source}: no records after --offset {offset} (the file has {len(records)})")
    if not isinstance(chosen[0], dict) or detect_format(chosen[0]) != "mquake":
        raise DataError(f"{source}: the multi-hop protocol needs MQuAKE records (keys 'requested_rewrite' as a list, "
                        f"'questions', 'new_answer', 'new_answer_alias'); record {offset} is not one. Use --data mquake "
                        "(get it with: python edit.py data get mquake) or a file in MQuAKE's format")
    by_record: dict[int, list[EditRequest]] = {}
    for index, request in convert_requests(chosen, source=source, on_invalid=on_invalid, start=offset):
        by_record.setdefault(index, []).append(request)
    cases = []
    for index, requests in by_record.items():  # in file order; skipped records have no requests
        try:
            cases.append(case_from_record(chosen[index - offset], tuple(requests), index))
        except KeyError as err:
            raise DataError(f"{source}: record {index} (format mquake) lacks field {err}; add it") from err
        except RequestTypeError as err:
            raise DataError(f"{source}: record {index}: {err}") from err
        except RequestError as err:  # no questions or no new answer: nothing to score
            if on_invalid == "raise":
                raise DataError(f"{source}: record {index}: {err}") from err
            log.warning("%s: skipped record %d: %s", source, index, err)
    return cases


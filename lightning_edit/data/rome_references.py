"""The reference texts of ROME's consistency score, as ROME released them (``data get counterfact-rome``).

``attribute_snippets.json``: Wikipedia snippets filed by (relation id, object id): texts about subjects that have
that object, e.g. people whose native language is French. ``idf.npy`` and ``tfidf_vocab.json``: the TF-IDF statistics
ROME computed over those snippets (vocabulary word → column, one IDF weight per column). Meng et al. 2022, §3.3
("Consistency"): the TF-IDF cosine similarity between what the edited model writes about the subject and the
reference texts about the new object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from ..errors import DataError, docs_link
from ..requests import EditRequest
from .loaders import default_data_dir, get_command, read_data_bytes, read_records

if TYPE_CHECKING:
    import numpy as np

SNIPPETS, IDF, VOCAB = "counterfact/attribute_snippets.json", "counterfact/idf.npy", "counterfact/tfidf_vocab.json"


@dataclass(frozen=True)
class RomeReferences:
    snippets: Mapping[tuple[str, str], tuple[str, ...]]  # (relation id, object id) → texts
    vocabulary: Mapping[str, int]
    idf: "np.ndarray"

    def texts(self, request: EditRequest) -> tuple[str, ...]:
        """The reference texts about ``request``'s new object; a DataError where ROME's release has none."""
        found = self.snippets.get((request.relation_id or "", request.target_new_id or ""), ())
        if not found:
            raise DataError(f"case {request.case_id!r}: attribute_snippets.json holds no reference text for relation "
                            f"{request.relation_id!r} and object {request.target_new_id!r}, so its consistency cannot "
                            f"be scored as ROME scores it ({docs_link('data.md', 'rome-counterfact-and-its-scores')})")
        return found


def needs_references(requests: Sequence[EditRequest]) -> bool:
    """Whether ``requests`` are ROME CounterFact records, scored for consistency against reference texts."""
    return any(r.generation_prompts and r.relation_id and r.target_new_id for r in requests)


def load_rome_references(data_dir: Optional[Union[str, Path]] = None) -> RomeReferences:
    """The snippets and TF-IDF statistics under ``data_dir`` (``.npy`` read without pickle: a plain array or an
    error); a DataError naming the missing file and the command that gets it."""
    import numpy as np

    root = default_data_dir(data_dir)
    missing = [rel for rel in (SNIPPETS, IDF, VOCAB) if not (root / rel).is_file()]
    if missing:
        raise DataError(f"ROME's consistency score needs {', '.join(missing)} under {root}; get them with: "
                        f"{get_command('counterfact-rome', data_dir)}, or pass --no-fluency to skip fluency and "
                        f"consistency ({docs_link('data.md', 'rome-counterfact-and-its-scores')})")
    snippets: dict[tuple[str, str], list[str]] = {}
    for el in read_records(root / SNIPPETS):
        snippets.setdefault((el["relation_id"], el["target_id"]), []).extend(s["text"] for s in el["samples"])
    vocabulary = json.loads(read_data_bytes(root / VOCAB))
    with open(root / IDF, "rb") as fh:
        idf = np.load(fh, allow_pickle=False)
    if idf.ndim != 1 or len(idf) != len(vocabulary):
        raise DataError(f"{root / IDF} holds {idf.shape} weights for the {len(vocabulary)} words of {root / VOCAB}; "
                        f"they belong together: get both again with {get_command('counterfact-rome', data_dir)} --force")
    return RomeReferences({k: tuple(v) for k, v in snippets.items()}, vocabulary, idf)

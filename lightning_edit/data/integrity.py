"""What makes a downloaded benchmark file trusted: its pinned bytes, or else its schema and record count, and the
record of what was downloaded (the manifest ``data verify`` compares against).

A pinned copy (a file at a git commit) is checked by sha256, or by its git blob id when only that is published. A
file from where its authors publish it (a web folder, the Hugging Face hub) has no hash known in advance: it is
checked by schema (every record parses into requests of the expected format, the auxiliary files have their expected
shape) and by record count where the count is known, and the sha256 of the bytes that passed is written to the
manifest at first download, so later changes are seen by ``data verify``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ..atomic import atomic_write_text
from ..errors import DataError, docs_link
from .loaders import read_data_bytes, read_records

MANIFEST_NAME = ".lightning-edit-downloads.json"  # in the data directory: path → what was downloaded, from where
MANIFEST_VERSION = 1

# Fields every record of a request file must hold, beyond what its format's converter reads: ROME's CounterFact
# scores need every prompt list, so a reformatting that dropped some is refused rather than scored partly.
REQUIRED_KEYS: dict[str, frozenset[str]] = {
    "counterfact-rome": frozenset({"case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
                                   "attribute_prompts", "generation_prompts"}),
    "zsre": frozenset({"src", "alt", "rephrase", "loc", "loc_ans", "answers"}),
    "mquake": frozenset({"case_id", "requested_rewrite", "questions", "new_answer"}),
}


def git_blob_sha1(path: Path) -> str:
    """Git's id of a file's content (``git hash-object``): sha1 of ``blob <size>\\0`` and the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 (git's id, not a security hash)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _bad(path_name: str, source: str, what: str) -> DataError:
    return DataError(f"{path_name}: the download from {source} {what}; nothing was written. The source may have changed "
                     f"or served an error page ({docs_link('data.md', 'integrity-and-the-download-manifest')})")


def _request_records(fmt: str) -> Callable[[Path], int]:
    def check(path: Path) -> int:
        from .formats import detect_format
        from .records import convert_requests

        records = read_records(path)
        if not records or detect_format(records[0]) != fmt:
            raise DataError(f"its records are not in the {fmt} format" if records else "it holds no record")
        for i, rec in enumerate(records):
            missing = REQUIRED_KEYS.get(fmt, frozenset()) - rec.keys()
            if missing:
                raise DataError(f"record {i} lacks {sorted(missing)}")
        records_log = logging.getLogger("lightning_edit.data.records")
        level = records_log.level
        records_log.setLevel(logging.ERROR)  # skipped records are reported when the file is read, not at download
        try:
            convert_requests(records, str(path), on_invalid="skip")  # every field of the right type
        finally:
            records_log.setLevel(level)
        return len(records)
    return check


def _attribute_snippets(path: Path) -> int:
    records = read_records(path)
    for i, rec in enumerate(records):
        samples = rec.get("samples") if isinstance(rec, dict) else None
        if not isinstance(samples, list) or not {"relation_id", "target_id"} <= rec.keys() or not all(
                isinstance(s, dict) and isinstance(s.get("text"), str) and "name" in s for s in samples):
            raise DataError(f"record {i} is not {{relation_id, target_id, samples: [{{name, text}}]}}")
    return len(records)


def _tfidf_vocab(path: Path) -> int:
    vocab = json.loads(read_data_bytes(path))
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise DataError("it is not a JSON object mapping each word to its column")
    return len(vocab)


def _idf(path: Path) -> int:
    import numpy as np

    with open(path, "rb") as fh:
        try:
            idf = np.load(fh, allow_pickle=False)  # never unpickled: a plain array or an error
        except ValueError as err:
            raise DataError(f"it is not a plain .npy array ({err})") from None
    if idf.ndim != 1 or idf.dtype.kind != "f" or not all(math.isfinite(x) for x in idf.tolist()):
        raise DataError(f"it is not a 1-D array of finite floats (shape {idf.shape}, dtype {idf.dtype})")
    return int(idf.shape[0])


def _text_lines(path: Path) -> int:
    try:
        text = read_data_bytes(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"it is not UTF-8 text ({err.reason})") from None
    return text.count("\n")


# schema name → check returning the number of records (lines, words) it found
SCHEMAS: dict[str, Callable[[Path], int]] = {
    **{fmt: _request_records(fmt) for fmt in ("zsre", "counterfact-rome", "counterfact-easyedit", "knowedit", "mquake",
                                               "known_1000")},
    "attribute-snippets": _attribute_snippets, "tfidf-vocab": _tfidf_vocab, "idf": _idf, "text": _text_lines,
}


def check_schema(path: Path, schema: str, records: Optional[int], name: str, source: str) -> int:
    """The record count of ``path`` after checking it against ``schema`` (and ``records`` when known); a
    DataError naming ``name``, the source and what is wrong otherwise."""
    try:
        found = SCHEMAS[schema](path)
    except DataError as err:
        raise _bad(name, source, f"does not have the {schema} schema: {str(err).removeprefix(str(path) + ': ')}") from None
    if records is not None and found != records:
        raise _bad(name, source, f"holds {found} records where {records} are expected")
    return found


# ---- manifest: what was downloaded, from where, with which sha256 ------------------------------------------------

def read_manifest(root: Path) -> dict[str, dict]:
    """path (relative to ``root``) → its download record; {} without a manifest. A damaged manifest is an error
    naming it (it is never guessed around: it is what `data verify` trusts)."""
    path = root / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        data = json.loads(read_data_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: is not the JSON manifest lightning-edit writes ({err}); move it away and run "
                        "`lightning-edit data get NAME --force` to download and record the files again") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), dict):
        raise DataError(f"{path}: is not a version-{MANIFEST_VERSION} manifest of lightning-edit; move it away and get "
                        "the files again with --force")
    return data["files"]


def record_download(root: Path, rel_path: str, sha256: str, size: int, source: str, records: int) -> None:
    """Add (or replace) the record of ``rel_path`` in the manifest, written atomically (never half a manifest)."""
    files = read_manifest(root)
    files[rel_path] = {"sha256": sha256, "size": size, "source": source, "records": records,
                       "downloaded": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(root / MANIFEST_NAME, json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=1,
                                                       sort_keys=True) + "\n")

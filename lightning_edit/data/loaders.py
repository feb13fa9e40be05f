"""Loaders for every benchmark format (converters in formats.py; the format is detected from the records' keys),
building ``datasets.Dataset``s (records.py) and handing editors ``EditRequest``s.

Data live outside the repository: ``--data-dir``, else ``$LIGHTNING_EDIT_DATA``, else ``../shared/data``
beside the project in a checkout, else ``~/.cache/lightning-edit/data`` for an installed package
(lightning_edit/paths.py). Named datasets map to files under that directory; any JSON file path works too, and so
does a file of a Hugging Face dataset repo, ``hf://datasets/OWNER/NAME[@REVISION]/PATH`` (hub.py; internet needed once).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional, Union

from ..errors import ConfigError, DataError, docs_link
from ..paths import DATA_ENV, DEMO_PATH, default_data_root
from ..requests import EditRequest, _type_name
from .formats import FORMATS
from .hub import HUB_PREFIX, download_hub_file, is_hub_url, pinned_url

if TYPE_CHECKING:  # datasets takes seconds to import: loaded on first use, so `lightning-edit data list` starts at once
    from datasets import Dataset

# name → path relative to the data directory ("demo" ships with the package: DEMO_PATH, lightning_edit/data/demo.json)
DATASETS: dict[str, str] = {
    "zsre": "zsre/zsre_mend_eval_portability_gpt4.json",
    "zsre-train": "zsre/zsre_mend_train-1k.json",
    "zsre-memit": "zsre/zsre_mend_eval.json",
    "counterfact": "counterfact/counterfact-edit.json",
    "counterfact-train": "counterfact/counterfact-train.json",
    "counterfact-rome": "counterfact/counterfact.json",
    "counterfact-rome-preview": "counterfact/cf_preview.json",
    "knowedit-counterfact": "knowedit/wiki_counterfact/train_cf.json",
    "knowedit-recent": "knowedit/wiki_recent/recent_train.json",
    "knowedit-wikibio": "knowedit/WikiBio/wikibio-train-all.json",
    "mquake": "mquake/AKEW-MQuAKE-CF.json",
    "mquake-cf-3k": "mquake/MQuAKE-CF-3k.json",
    "mquake-t": "mquake/MQuAKE-T.json",
    "known_1000": "known_1000/known_1000.json",
}
# name → download group of `lightning-edit data get` (lightning_edit/data/fetch.py holds the pinned files)
DATASET_GROUPS: dict[str, str] = {
    "zsre": "zsre", "zsre-train": "zsre", "zsre-memit": "zsre",
    "counterfact": "counterfact", "counterfact-train": "counterfact", "counterfact-rome-preview": "counterfact",
    "counterfact-rome": "counterfact-rome",
    "knowedit-counterfact": "knowedit", "knowedit-recent": "knowedit", "knowedit-wikibio": "knowedit",
    "mquake": "mquake", "mquake-cf-3k": "mquake", "mquake-t": "mquake",
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
    """The local file of a dataset name, a path, or a hub file (``hf://datasets/...``, downloaded once)."""
    if is_hub_url(name_or_path):
        return download_hub_file(name_or_path)
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
                f"(default: ../shared/data beside a checkout, else ~/.cache/lightning-edit/data). "
                f"Sources and licences: {docs_link('data.md')}"
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
    # "zjunlp/KnowEdit" looks like a hub id: say how to name a file of it
    hub_hint = (f"; for a file of the Hugging Face dataset repo {name_or_path}, write "
                f"{HUB_PREFIX}datasets/{name_or_path}/<path of the file in the repo>"
                if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not Path(name_or_path).suffix else "")
    raise DataError(
        f"dataset {name_or_path!r} is neither a known name ({', '.join(['demo', *DATASETS])}) nor an existing file "
        f"(`lightning-edit data list` shows what can be downloaded){hub_hint}"
    )


# The largest benchmark file (KnowEdit's WikiBio, CounterFact's train split) is under 100 MB; a request file ten
# times that is a mistake (a log, a model), and /dev/zero would be read forever.
MAX_DATA_FILE_BYTES = 1 << 30


def read_data_bytes(path: Path, limit: Optional[int] = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (default ``MAX_DATA_FILE_BYTES``); a folder, a device
    or pipe (/dev/zero, /dev/stdin) or a larger file is a DataError naming it, before anything is read."""
    import stat

    limit = MAX_DATA_FILE_BYTES if limit is None else limit

    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
                raise DataError(f"{path}: is not a regular file ({kind}); give a JSON or JSON-lines file")
            raw = fh.read(limit + 1)  # bounded even if the file grows while it is read
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file; give a JSON or JSON-lines file") from None
    if len(raw) > limit:
        raise DataError(f"{path}: is larger than {limit >> 20} MB, the most a data file may be; split it into "
                        "several files (JSON lines: one record per line) or pass --n with a smaller file")
    return raw


def _parse_json(path: Path, text: str):
    """``json.loads`` of a whole file; nesting deeper than Python's recursion limit is a DataError naming it."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{path}: is nested too deeply (lists or objects inside each other more than "
                        f"~{sys.getrecursionlimit()} levels); a request record is a flat object") from None


def read_records(path: Path) -> list:
    """The records of a JSON file (a list, or an object holding the list under "data" or "requests") or a JSON-lines
    file, read as strict UTF-8."""
    raw = read_data_bytes(path)
    try:
        text = raw.decode("utf-8-sig")  # strict: an invalid byte is an error, not a replacement character
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: is not valid UTF-8: byte {raw[err.start:err.start + 1]!r} at offset {err.start} (line {line}) "
                        f"{err.reason}; save the file as UTF-8") from err
    if not text.strip():
        raise DataError(f"{path}: is empty; give a JSON list of records or JSON lines, one record per line")
    try:
        records = _parse_json(path, text)
    except json.JSONDecodeError as whole_err:
        lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        records = []
        for n, line in lines:
            try:
                records.append(_parse_json(path, line))
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


def read_source(name_or_path: str, data_dir: Optional[Union[str, Path]], n: Optional[int], offset: int,
                unit: str = "records") -> tuple[str, list]:
    """``(source name, raw records)`` of a named dataset, a JSON/JSON-lines file or a hub file, after checking ``n`` and
    ``offset``; an unreadable file or a folder is a DataError naming it."""
    if offset < 0 or (n is not None and n < 0):
        raise ConfigError(f"n ({n}) and offset ({offset}) must be ≥ 0 (--n counts {unit}, --offset skips them)")
    path = resolve_dataset_path(name_or_path, data_dir)
    # a hub file without @REVISION is named by the commit it was read at (in messages and what records the source)
    source = pinned_url(name_or_path, path) if is_hub_url(name_or_path) else str(path)
    try:
        return source, read_records(path)
    except IsADirectoryError as err:
        raise DataError(f"{path}: is a folder, not a file; give a JSON or JSON-lines file") from err
    except DataError:
        raise
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err


def load_request_dataset(name_or_path: str, n: Optional[int] = None, data_dir: Optional[Union[str, Path]] = None,
                         offset: int = 0, on_invalid: str = "skip") -> "Dataset":
    """A named dataset, a JSON (list or JSON-lines) file or a hub file (``hf://datasets/OWNER/NAME/PATH``) as a
    ``datasets.Dataset`` of requests (columns: records.REQUEST_FEATURES): ``n`` records after ``offset``,
    each record parsed and converted once. ``load_requests`` gives the ``EditRequest``s without the dataset."""
    from .records import requests_dataset

    return requests_dataset(_converted(name_or_path, n, data_dir, offset, on_invalid))


def _converted(name_or_path: str, n: Optional[int], data_dir: Optional[Union[str, Path]], offset: int,
               on_invalid: str) -> list[tuple[int, EditRequest]]:
    """The chosen records of a source, each parsed once (with its file) and converted once."""
    from .records import convert_requests

    source, records = read_source(name_or_path, data_dir, n, offset)
    chosen = records[offset:offset + n if n is not None else None]
    return convert_requests(chosen, source=source, on_invalid=on_invalid, start=offset)


def load_requests(name_or_path: str, n: Optional[int] = None, data_dir: Optional[Union[str, Path]] = None, offset: int = 0,
                  on_invalid: str = "skip") -> list[EditRequest]:
    """Requests from a named dataset, a JSON (list or JSON-lines) file or a hub file; ``n`` first after ``offset``."""
    return [request for _, request in _converted(name_or_path, n, data_dir, offset, on_invalid)]


def convert_records(records: Iterable[dict], source: str = "<records>", on_invalid: str = "skip", start: int = 0) -> list[EditRequest]:
    """Convert raw records (parsed JSON) to requests, through the same ``.map`` as the files (records.convert_dataset).
    ``start``: the index in the file of the first record (for messages)."""
    from .records import convert_requests

    return [request for _, request in convert_requests(list(records), source, on_invalid, start)]

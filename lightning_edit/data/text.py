"""Plain text (WikiText) for the key statistics of ROME, MEMIT and AlphaEdit, as a ``datasets.Dataset``.

The source is a local file (the WikiText-2 excerpt shipped in text/, or ``lightning-edit data get wikitext``'s full test
split) or, for users with internet, a file of a hub dataset repo (``hf://datasets/OWNER/NAME[@REVISION]/PATH``, see
hub.py), e.g. a Parquet file of ``Salesforce/wikitext`` whose ``text`` column holds the lines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ..errors import DataError
from .hub import download_hub_file, is_hub_url

TEXT_COLUMN = "text"


def resolve_text_source(text: Union[str, Path], field: str = "field 'stats_text'") -> Path:
    """The local file of a statistics text: the path itself, or a hub file downloaded into the Hugging Face cache."""
    return download_hub_file(str(text), field) if is_hub_url(text) else Path(text)


def text_dataset(path: Union[str, Path]):
    """The non-empty lines of a text file, stripped, in order, as a dataset with one column ``text`` (a Parquet file's
    ``text`` column is read the same way). Undecodable bytes become U+FFFD: statistics need text, not a perfect file."""
    from datasets import Dataset

    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = pq.read_schema(path).names
        if TEXT_COLUMN not in columns:
            raise DataError(f"statistics text {path}: a Parquet file needs a column {TEXT_COLUMN!r} (it has {columns}); "
                            "give a plain text file or WikiText's Parquet file")
        lines = pq.read_table(path, columns=[TEXT_COLUMN]).column(TEXT_COLUMN).to_pylist()
    else:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return Dataset.from_dict({TEXT_COLUMN: [line.strip() for line in lines if line and line.strip()]})

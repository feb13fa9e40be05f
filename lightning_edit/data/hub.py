"""Files of Hugging Face Hub dataset repositories, for users with internet.

One rule, the URL form of huggingface_hub's own file system: ``hf://datasets/OWNER/NAME[@REVISION]/PATH``, e.g.
``hf://datasets/zjunlp/KnowEdit/benchmark/wiki_counterfact/train_cf.json``. The file is downloaded once into the
Hugging Face cache (``$HF_HOME``, like hub models) and then read like a local file, with the same checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DataError

HUB_PREFIX = "hf://"
HUB_EXAMPLE = "hf://datasets/zjunlp/KnowEdit/benchmark/wiki_counterfact/train_cf.json"
_HUB_URL = re.compile(r"hf://datasets/(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>[^/\s]+))?(?:/(?P<path>\S*))?")


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    path: str
    revision: Optional[str] = None

    @property
    def browse_url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo_id}/tree/{self.revision or 'main'}"


def is_hub_url(text: object) -> bool:
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_url(url: str, field: str = "--data") -> HubFile:
    """``hf://datasets/OWNER/NAME[@REVISION]/PATH`` → its parts; DataError naming ``field`` and the form otherwise."""
    match = _HUB_URL.fullmatch(url)
    if match is None:
        raise DataError(f"{field} {url!r}: a file of a Hugging Face dataset repo is written "
                        f"hf://datasets/OWNER/NAME[@REVISION]/PATH, e.g. {HUB_EXAMPLE}")
    hub = HubFile(match["repo"], (match["path"] or "").strip("/"), match["revision"])
    if not hub.path:
        raise DataError(f"{field} {url!r} names the dataset repo {hub.repo_id}, not a file in it; add the file's path "
                        f"(the repo's files: {hub.browse_url}), e.g. {HUB_EXAMPLE}")
    return hub


def download_hub_file(url: str, field: str = "--data") -> Path:
    """The local path of a hub dataset file (downloaded into the Hugging Face cache unless it is there already)."""
    hub = parse_hub_url(url, field)
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.hf_hub_download(hub.repo_id, hub.path, repo_type="dataset", revision=hub.revision))
    except LocalEntryNotFoundError as err:  # offline (or HF_HUB_OFFLINE=1) and not in the cache
        revision = f" --revision {hub.revision}" if hub.revision else ""
        raise DataError(
            f"{field} {url}: not in the Hugging Face cache, and the hub cannot be reached from here "
            f"({type(err).__name__}). Download it where there is internet (hf download --repo-type dataset "
            f"{hub.repo_id} {hub.path}{revision}) and copy the cache (~/.cache/huggingface) here, or give the file's local path "
            f"(set HF_HUB_OFFLINE=1 to fail at once instead of retrying)."
        ) from err
    except (EntryNotFoundError, HfHubHTTPError) as err:  # online, but no such repo, revision or file
        raise DataError(f"{field} {url}: the hub answered {type(err).__name__}; check the repo, revision and path at "
                        f"{hub.browse_url}") from err

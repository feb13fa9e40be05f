"""Files of Hugging Face Hub dataset repositories, for users with internet.

One rule, the URL form of huggingface_hub's own file system: ``hf://datasets/OWNER/NAME[@REVISION]/PATH``, e.g.
``hf://datasets/zjunlp/KnowEdit/benchmark/wiki_counterfact/train_cf.json``. The file is downloaded once into the
Hugging Face cache (``$HF_HOME``, like hub models) and then read like a local file, with the same checks.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DataError

log = logging.getLogger(__name__)

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
    _check_hub_parts(hub, url, field)
    if not hub.path:
        raise DataError(f"{field} {url!r} names the dataset repo {hub.repo_id}, not a file in it; add the file's path "
                        f"(the repo's files: {hub.browse_url}), e.g. {HUB_EXAMPLE}")
    return hub


# The hub's own rules for an OWNER or NAME: letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters.
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _check_hub_parts(hub: HubFile, url: str, field: str) -> None:
    """A malformed repo name, revision or file path is a DataError naming ``field``, before the hub is asked."""
    for part in hub.repo_id.split("/"):
        if not _REPO_PART.fullmatch(part) or "--" in part or ".." in part:
            raise DataError(f"{field} {url!r}: {part!r} is not a valid owner or name of a Hugging Face repo (letters, "
                            "digits, '-', '_', '.'; no '--' or '..'; at most 96 characters), e.g. " + HUB_EXAMPLE)
    if hub.revision is not None and (not _REVISION.fullmatch(hub.revision) or ".." in hub.revision):
        raise DataError(f"{field} {url!r}: revision {hub.revision!r} is not a branch, tag or commit name "
                        "(letters, digits, '-', '_', '.'); pin a commit: hf://datasets/OWNER/NAME@<commit>/PATH")
    if any(seg in ("..", ".") for seg in hub.path.split("/")) or "\\" in hub.path:
        raise DataError(f"{field} {url!r}: the file path {hub.path!r} has a '..' or '.' segment; give the path of "
                        "the file inside the repo")


def _commit_of(local: Path) -> Optional[str]:
    """The commit a cached hub file was resolved to (its ``snapshots/<commit>/`` folder), when the path shows it."""
    parts = Path(local).parts
    if "snapshots" in parts[:-1]:
        commit = parts[parts.index("snapshots") + 1]
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return commit
    return None


def pinned_url(url: str, local: Path, field: str = "--data") -> str:
    """``url`` with the revision it resolved to: unchanged when it names one (``@rev``), else with the commit of the
    downloaded file (what a report records, so the same bytes can be read again)."""
    hub = parse_hub_url(url, field)
    commit = None if hub.revision is not None else _commit_of(local)
    return url if commit is None else f"{HUB_PREFIX}datasets/{hub.repo_id}@{commit}/{hub.path}"


def _warn_unpinned(url: str, local: Path, field: str) -> None:
    # Warned, not refused: the file is parsed as data, never run, so an unpinned one risks a changed data set, not
    # the machine; the documented form without @REVISION keeps working and the commit read is named.
    pinned = pinned_url(url, local, field)
    if pinned != url:
        log.warning("%s %s names no revision: read at its newest commit; to read the same bytes again, write %s",
                    field, url, pinned)
    elif parse_hub_url(url, field).revision is None:
        log.warning("%s %s names no revision: the file may change on the hub between runs; pin a commit with "
                    "hf://datasets/OWNER/NAME@<commit>/PATH", field, url)


def download_hub_file(url: str, field: str = "--data") -> Path:
    """The local path of a hub dataset file (downloaded into the Hugging Face cache unless it is there already).
    Without ``@REVISION`` the newest file is read, with a warning naming the commit (``pinned_url``)."""
    hub = parse_hub_url(url, field)
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = Path(huggingface_hub.hf_hub_download(hub.repo_id, hub.path, repo_type="dataset", revision=hub.revision))
        _warn_unpinned(url, local, field)
        return local
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
    except ValueError as err:  # huggingface_hub's own validation (HFValidationError) of what passed ours
        raise DataError(f"{field} {url}: {err}".splitlines()[0]) from None

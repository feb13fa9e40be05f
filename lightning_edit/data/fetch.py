"""`lightning-edit data`: download the benchmark files the loaders read, checked, to where the loaders look.

Each file has an ordered list of sources: where its authors publish it (ROME's and MEMIT's data releases, the
Hugging Face hub, MQuAKE's repository), then a pinned copy (a raw.githubusercontent.com URL at a fixed commit, its
size and sha256) to fall back on. A download is written under a temporary name beside its destination, checked (the
pinned sha256 or git blob id, else schema and record count: lightning_edit/data/integrity.py), and only then renamed
into place, so the final name never holds a partial or unchecked file; its sha256 is recorded in the data
directory's manifest, which `data verify` compares against. See docs/data.md for the sources and licences.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shlex
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Optional, Sequence, Union

from ..atomic import temporary_sibling
from ..errors import DataError, LightningEditError, docs_link
from .integrity import MANIFEST_NAME, check_schema, git_blob_sha1, read_manifest, record_download
from .loaders import DATA_ENV, DATASETS, MAX_DATA_FILE_BYTES, default_data_dir, get_command

WIKITEXT_PATH = "text/wikitext-2/wiki.test.raw"  # full WikiText-2 raw test split, relative to the data directory
HUB_DATASET = "hf-dataset://"  # a source read with datasets.load_dataset: hf-dataset://OWNER/NAME/CONFIG/SPLIT
TIMEOUT_S = 60.0
CHUNK = 1 << 16

# An opener maps a URL to its body: bytes, or a binary file-like object (closed after reading when it can be).
Opener = Callable[[str], Union[bytes, BinaryIO]]
Echo = Callable[[str], None]

# What a failing network looks like (HTTPError is a URLError; socket.timeout is TimeoutError since 3.10).
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException)


@dataclass(frozen=True)
class Source:
    """One place a file can be got from. Integrity: ``sha256`` (and ``size``) of pinned bytes, else ``git_blob`` (git's
    id of the file at a pinned commit), else schema and ``records`` (the count, when known); ``records`` is checked
    for every source that names it."""

    url: str  # https URL, or hf-dataset://OWNER/NAME/CONFIG/SPLIT (a hub dataset's "text" rows, one line each)
    sha256: Optional[str] = None
    size: Optional[int] = None  # bytes, known with sha256
    git_blob: Optional[str] = None
    records: Optional[int] = None

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None or self.git_blob is not None

    @property
    def browse_url(self) -> str:
        """The page of the file for people (a pinned GitHub file's blob page; `url` is what is downloaded)."""
        if self.url.startswith(HUB_DATASET):
            return "https://huggingface.co/datasets/" + "/".join(self.url[len(HUB_DATASET):].split("/")[:2])
        prefix = "https://raw.githubusercontent.com/"
        if not self.url.startswith(prefix):
            return self.url
        owner, repo, commit, rest = self.url[len(prefix):].split("/", 3)
        return f"https://github.com/{owner}/{repo}/blob/{commit}/{rest}"


@dataclass(frozen=True)
class DataFile:
    """One file the loaders read, with the sources it is got from in order: where its authors publish it first,
    then a pinned copy to fall back on."""

    group: str          # `data get` name it belongs to
    path: str           # destination relative to the data directory (what DATASETS / the statistics code read)
    sources: tuple[Source, ...]
    licence: str
    home: str           # citation and official home page
    datasets: tuple[str, ...] = ()  # `--data` names that read this file
    schema: str = ""    # integrity.SCHEMAS name: how a download without a known hash is checked

    @property
    def url(self) -> str:
        return self.sources[0].url

    @property
    def pinned(self) -> Optional[Source]:
        """The source whose sha256 is known (the pinned copy), if any."""
        return next((s for s in self.sources if s.sha256), None)

    @property
    def sha256(self) -> Optional[str]:
        return self.pinned.sha256 if self.pinned else None

    @property
    def size(self) -> Optional[int]:
        return self.pinned.size if self.pinned else None

    @property
    def browse_url(self) -> str:
        return self.sources[-1].browse_url


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _pinned(url: str, sha256: str, size: int) -> Source:
    return Source(url, sha256=sha256, size=size)


# Provenance of each pinned copy: /work/shared/data/*/SOURCE.md (origin repo, commit, path, git blob SHA-1, size); the
# sha256 values were computed from those byte-identical copies. The authors' own releases (ROME/MEMIT's web folders,
# the hub, MQuAKE's repository) have no sha256 known here: they are checked by schema (and git blob id or record count
# where known) and the sha256 of what was downloaded is recorded in the data directory's manifest.
_KS = ("Jometeorie/KnowledgeSpread", "d1a8d1ed5367e66010d4d9b081ab388b46c2438c")
_LTE = ("YJiangcm/LTE", "32d444873e794f3f4f7866e504f15c477e8568b3")
_MQUAKE = ("princeton-nlp/MQuAKE", "fb43dadc2d8cd19d08ce81c63d957b59deb3f3cd")
ROME_DSETS = "https://rome.baulab.info/data/dsets/"  # ROME's data release (kmeng01/rome, dsets/*.py)
MEMIT_DSETS = "https://memit.baulab.info/data/dsets/"  # MEMIT's data release (kmeng01/memit, dsets/zsre.py)
KNOWEDIT_HUB = "https://huggingface.co/datasets/zjunlp/KnowEdit/resolve/main/benchmark/"
_ZSRE_HOME = "Levy et al. 2017 (zsRE); Mitchell et al. 2022 (MEND); Yao et al. 2023 (portability); https://github.com/zjunlp/EasyEdit"
_ROME_HOME = "Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME); https://rome.baulab.info/"
_KNOWEDIT_HOME = ("Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs (KnowEdit); official home: "
                  "https://huggingface.co/datasets/zjunlp/KnowEdit")
_KNOWEDIT_LICENCE = "MIT (KnowEdit/EasyEdit; fallback host repo YJiangcm/LTE: Apache-2.0)"
_MQUAKE_HOME = "Zhong et al. 2023 (MQuAKE), https://github.com/princeton-nlp/MQuAKE"
_ROME_COUNTERFACT_RECORDS = 21_919  # the ROME paper's CounterFact size (case_id 0..21918)


def _rome_file(name: str, schema: str, records: Optional[int] = None) -> DataFile:
    return DataFile("counterfact-rome", f"counterfact/{name}", (Source(ROME_DSETS + name, records=records),),
                    "MIT (ROME release)", _ROME_HOME, ("counterfact-rome",), schema)


REGISTRY: tuple[DataFile, ...] = (
    DataFile("zsre", DATASETS["zsre"],
             (_pinned(_github("shariqahn/EasyEdit", "216a4cd009eaf5254add0890829fd93077124f77",
                              "data/notebook/zsre_mend_eval_portability_gpt4.json"),
                      "0cf155da229b2eccae19fcfe5f7a09523363d357f5f15508d1521f495ad5ecd9", 842_861),),
             "MIT (EasyEdit; zsRE data via MEND)", _ZSRE_HOME, ("zsre",), "zsre"),
    DataFile("zsre", DATASETS["zsre-train"],
             (_pinned(_github(*_KS, "data/zsre/zsre_mend_train-1k.json"),
                      "09dbb446f4afa1e500e051806430d286ef260fa6dd89e3590a9756f8b060a229", 524_937),),
             "MIT (MEND/EasyEdit data; host repo: Apache-2.0)", _ZSRE_HOME, ("zsre-train",), "zsre"),
    DataFile("zsre", DATASETS["zsre-memit"], (Source(MEMIT_DSETS + "zsre_mend_eval.json"),),
             "MIT (MEMIT release; zsRE via MEND)", "Meng et al. 2023 (MEMIT), https://memit.baulab.info/; " + _ZSRE_HOME,
             ("zsre-memit",), "zsre"),
    DataFile("counterfact", DATASETS["counterfact"],
             (_pinned(_github(*_KS, "data/counterfact/counterfact-edit.json"),
                      "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967", 3_850_773),),
             "MIT (CounterFact, from ROME; host repo: Apache-2.0)", _ROME_HOME, ("counterfact",), "counterfact-easyedit"),
    DataFile("counterfact", DATASETS["counterfact-train"],
             (_pinned(_github(*_KS, "data/counterfact/counterfact-train.json"),
                      "bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0", 3_849_872),),
             "MIT (CounterFact, from ROME; host repo: Apache-2.0)", _ROME_HOME, ("counterfact-train",), "counterfact-easyedit"),
    DataFile("counterfact", DATASETS["counterfact-rome-preview"],
             (_pinned(_github("zhrli324/RLEdit", "1822b1c79f90eceeba93f3d09aeec6a60d9a25d5",
                              "data/dsets/counterfact/cf_preview.json"),
                      "305fcef4d008743a01d19a6c4677d70a1bb4181d5cc71fd5a1fc51b598c69745", 15_350),),
             "MIT (ROME's CounterFact; host repo states none)", _ROME_HOME, ("counterfact-rome-preview",), "counterfact-rome"),
    _rome_file("counterfact.json", "counterfact-rome", _ROME_COUNTERFACT_RECORDS),
    # the consistency score's references: Wikipedia snippets of subjects that have each attribute, TF-IDF statistics
    _rome_file("attribute_snippets.json", "attribute-snippets"),
    _rome_file("idf.npy", "idf"),
    _rome_file("tfidf_vocab.json", "tfidf-vocab"),
    *(DataFile("knowedit", DATASETS[name],
               (Source(KNOWEDIT_HUB + sub_path), _pinned(_github(*_LTE, "EasyEdit/data/knowedit/" + sub_path), sha, size)),
               _KNOWEDIT_LICENCE, _KNOWEDIT_HOME, (name,), "knowedit")
      for name, sub_path, sha, size in (  # the same path under the hub's benchmark/ and in LTE's copy
          ("knowedit-counterfact", "wiki_counterfact/train_cf.json",
           "acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d", 1_388_264),
          ("knowedit-recent", "wiki_recent/recent_train.json",
           "5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a", 1_837_416),
          ("knowedit-wikibio", "WikiBio/wikibio-train-all.json",
           "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209", 454_217))),
    DataFile("mquake", DATASETS["mquake"],
             (_pinned(_github("jianghoucheng/AnyEdit", "fb994d225a24f987c7826c72503a4364056ab3c1", "data/AKEW/MQuAKE-CF.json"),
                      "8469d4a0b8a4ff4168de987576e7ecea4754202627cd3ab3181339ffc411ddc5", 3_183_842),),
             "MIT (MQuAKE, princeton-nlp/MQuAKE); the AKEW subset's host repo states none",
             _MQUAKE_HOME + "; AKEW subset of MQuAKE-CF", ("mquake",), "mquake"),
    DataFile("mquake", DATASETS["mquake-cf-3k"],
             (Source(_github(*_MQUAKE, "datasets/MQuAKE-CF-3k.json"), git_blob="b9d0963c6c1c81b24d8113ffdc3fd0865a423e18"),),
             "MIT (MQuAKE)", _MQUAKE_HOME, ("mquake-cf-3k",), "mquake"),
    DataFile("mquake", DATASETS["mquake-t"],
             (Source(_github(*_MQUAKE, "datasets/MQuAKE-T.json"), git_blob="afd89d0c8fe5e304f771bad88cc0ced611278fe0"),),
             "MIT (MQuAKE)", _MQUAKE_HOME, ("mquake-t",), "mquake"),
    DataFile("known_1000", DATASETS["known_1000"],
             (_pinned(ROME_DSETS + "known_1000.json", "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df", 343_226),
              _pinned(_github("MaxLEAF3824/gpt_re", "a0134700ce4c073ad92b75facb15ae180c9b3e24", "data/known_1000.json"),
                      "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df", 343_226)),
             "MIT (ROME release)", _ROME_HOME, ("known_1000",), "known_1000"),
    DataFile("wikitext", WIKITEXT_PATH,
             (Source(HUB_DATASET + "Salesforce/wikitext/wikitext-2-raw-v1/test"),
              _pinned(_github("Tylogi/TyloQuant", "aa7023b3a96905a70f7a7ce9836834f02694c670", "data/wikitext-2-raw/wiki.test.raw"),
                      "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c", 1_290_547)),
             "CC BY-SA 3.0 (WikiText; fallback host repo: Apache-2.0)",
             "Merity et al. 2016, Pointer Sentinel Mixture Models (WikiText-2 raw, test split); "
             "https://huggingface.co/datasets/Salesforce/wikitext", (), "text"),
)

GROUPS: dict[str, str] = {
    "zsre": "ZsRE: EasyEdit's eval set with portability, its 1k training subset, MEMIT's zsRE eval set",
    "counterfact": "CounterFact: EasyEdit edit/train splits + ROME-format 7-case preview",
    "counterfact-rome": "CounterFact as ROME released it (21,919 cases) + the references of its consistency score",
    "knowedit": "KnowEdit: WikiData counterfact, WikiData recent, WikiBio",
    "mquake": "MQuAKE: CF-3k and T from its authors, and the AKEW subset of MQuAKE-CF (354 cases)",
    "known_1000": "known_1000: facts GPT-2 XL knows (ROME, for tracing)",
    "wikitext": "WikiText-2 raw test split (optional: the package ships an excerpt for key statistics)",
}
ALL = "all"


def names() -> list[str]:
    """Every name `get` / `verify` accept: the groups, `all`, and each `--data` dataset name (its one file)."""
    return [*GROUPS, ALL, *(n for n in DATASETS if n not in GROUPS)]


def select(name: str) -> list[DataFile]:
    """The files of a group, of `all`, or the one file a `--data` dataset name reads."""
    if name == ALL:
        return list(REGISTRY)
    if name in GROUPS:
        return [f for f in REGISTRY if f.group == name]
    if name in DATASETS:
        return [f for f in REGISTRY if name in f.datasets]
    raise DataError(f"unknown data name {name!r}; choose from: {', '.join(names())}")


def _select_many(names_: Iterable[str]) -> list[DataFile]:
    # validate every name before downloading anything, and fetch each file once (`get zsre all`)
    chosen: dict[str, DataFile] = {}
    for name in names_:
        for f in select(name):
            chosen.setdefault(f.path, f)
    return list(chosen.values())


def sha256_file(path: Path) -> str:
    """The sha256 of ``path``; a folder (or a device, a pipe) where a data file belongs is a DataError naming it."""
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise DataError(f"{path} is {kind}, where a data file belongs; move it away (the file is downloaded there "
                        "by `lightning-edit data get`)")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _urlopen(url: str) -> BinaryIO:
    from ..version import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"lightning-edit/{__version__}"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (pinned https URLs only)


def _chunks(body: Union[bytes, BinaryIO]) -> Iterator[bytes]:
    if isinstance(body, (bytes, bytearray)):
        yield bytes(body)
        return
    try:
        for block in iter(lambda: body.read(CHUNK), b""):
            yield block
    finally:
        close = getattr(body, "close", None)
        if close:
            close()


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        err.close()  # an HTTPError holds the open response
        return f"HTTP {err.code} {err.reason}"
    return str(getattr(err, "reason", None) or err) or type(err).__name__


def _network_error(source: Source, err: BaseException) -> DataError:
    return DataError(f"could not download {source.url} ({_reason(err)}): this machine seems offline, or the URL failed")


def _by_hand(entry: DataFile, root: Path) -> str:
    last = entry.sources[-1]
    pinned = f" (sha256 {last.sha256}, {last.size} bytes)" if last.sha256 else ""
    return (f"To do it by hand: download {last.url} to {root / entry.path}{pinned}, then check it with: "
            f"lightning-edit data verify {entry.group} --data-dir {shlex.quote(str(root))}")


def _stream(source: Source, opener: Opener, out: BinaryIO) -> bool:
    """Write the body of ``source.url`` to ``out``; False when it grew past the pinned size (stopped early)."""
    limit, size = source.size or MAX_DATA_FILE_BYTES, 0
    for block in _chunks(opener(source.url)):
        size += len(block)
        if size > limit:  # a wrong page (portal, error HTML) or a changed file: stop early
            return False
        out.write(block)
    return True


def _hub_text(source: Source, load_dataset: Callable) -> bytes:
    """A hub dataset split's "text" rows as the raw text file the statistics read (one row per line)."""
    repo_owner, repo_name, config, split = source.url[len(HUB_DATASET):].split("/")
    try:
        rows = load_dataset(f"{repo_owner}/{repo_name}", config, split=split)
        texts = rows["text"]
    except Exception as err:  # noqa: BLE001 (datasets raises many kinds: offline, not found, cache); the next source is tried
        raise DataError(f"could not load {source.url} with datasets.load_dataset ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}): offline, or the hub failed") from None
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts).encode("utf-8")


def _check_pinned(entry: DataFile, source: Source, tmp: Path, complete: bool) -> None:
    if source.sha256:
        size, got = tmp.stat().st_size, sha256_file(tmp)
        if not complete or size != source.size or got != source.sha256:
            got_text = f"sha256 {got} ({size} bytes)" if complete else f"more than {source.size} bytes (download stopped)"
            raise DataError(
                f"{entry.path}: the download from {source.url} does not match the pinned file: expected sha256 "
                f"{source.sha256} ({source.size} bytes), got {got_text}. Nothing was written to that name. The upstream "
                f"file may have changed, or the download was corrupted; try again or download it by hand and compare.")
    elif source.git_blob and git_blob_sha1(tmp) != source.git_blob:
        raise DataError(f"{entry.path}: the download from {source.url} is not the file of that commit (git blob "
                        f"{source.git_blob}, got {git_blob_sha1(tmp)}); nothing was written to that name")
    elif not complete:
        raise DataError(f"{entry.path}: the download from {source.url} is larger than {MAX_DATA_FILE_BYTES >> 20} MB, "
                        "the most a data file may be; stopped")


def _download(entry: DataFile, source: Source, root: Path, opener: Opener, load_dataset: Callable) -> Path:
    """Write ``source`` to a temporary name beside the destination, check it (pinned bytes, else schema and record
    count), rename it into place and record its sha256 in the manifest."""
    dest = root / entry.path
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {dest.parent}: {err}; choose a writable folder with --data-dir") from None
    tmp = temporary_sibling(dest, ".part")  # per process: concurrent runs do not collide; os.replace stays on one filesystem
    try:
        try:
            out = open(tmp, "wb")
        except OSError as err:
            raise DataError(f"cannot write {tmp}: {err}; choose a writable folder with --data-dir") from None
        try:
            with out:
                complete = True
                if source.url.startswith(HUB_DATASET):
                    out.write(_hub_text(source, load_dataset))
                else:
                    complete = _stream(source, opener, out)
        except (*NETWORK_ERRORS, OSError) as err:  # OSError: what an opener raises for a path it cannot serve
            raise _network_error(source, err) from None
        _check_pinned(entry, source, tmp, complete)
        records = check_schema(tmp, entry.schema, source.records, entry.path, source.url)
        got = sha256_file(tmp)
        try:
            os.replace(tmp, dest)  # atomic: the final name holds the old file or the checked one, never a partial
        except OSError as err:
            raise DataError(f"cannot move the checked download into {dest}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    record_download(root, entry.path, got, dest.stat().st_size, source.url, records)
    return dest


def _download_any(entry: DataFile, root: Path, opener: Opener, load_dataset: Callable, say: Echo) -> Source:
    """Try each source of ``entry`` in order (its authors' release first, a pinned copy last); the one used."""
    failures: list[DataError] = []
    for n, source in enumerate(entry.sources):
        say(f"download  {source.url}\n       -> {root / entry.path}" + (f" ({_size(source.size)})" if source.size else ""))
        try:
            _download(entry, source, root, opener, load_dataset)
            return source
        except DataError as err:
            failures.append(err)
            if n + 1 < len(entry.sources):
                say(f"failed    {err}\n          trying the next source")
    if len(failures) == 1:
        raise DataError(f"{failures[0]}. {_by_hand(entry, root)}") from None
    tried = "; ".join(f"{i}) {err}" for i, err in enumerate(failures, 1))
    raise DataError(f"{entry.path}: every source failed: {tried}. {_by_hand(entry, root)}") from None


def _present_ok(entry: DataFile, root: Path) -> Optional[str]:
    """How a present file is trusted ("pinned sha256", "recorded at download"), or None when it is not."""
    dest = root / entry.path
    got = sha256_file(dest)
    if got == entry.sha256:
        return "sha256 verified"
    recorded = read_manifest(root).get(entry.path)
    return "sha256 as recorded at download" if recorded and recorded.get("sha256") == got else None


def _adopt(entry: DataFile, root: Path) -> Optional[str]:
    """A file put in place by hand where no hash is pinned and none recorded: checked by schema and record count
    like a download, then recorded (so `verify` compares with it from now on)."""
    dest = root / entry.path
    if entry.sha256 or read_manifest(root).get(entry.path):
        return None
    records = check_schema(dest, entry.schema, entry.sources[0].records, entry.path, f"{dest} (put there by hand)")
    record_download(root, entry.path, sha256_file(dest), dest.stat().st_size, "present, not downloaded", records)
    return "schema checked, sha256 recorded"


def _fetch_files(files: Sequence[DataFile], data_dir: Optional[Union[str, Path]], force: bool, opener: Optional[Opener],
                 echo: Optional[Echo], load_dataset: Optional[Callable] = None) -> list[Path]:
    root = default_data_dir(data_dir)
    opener = opener or _urlopen
    load_dataset = load_dataset or _load_dataset
    say = echo or (lambda _msg: None)
    paths = []
    for entry in files:
        dest = root / entry.path
        if dest.exists() and not force:
            trusted = _present_ok(entry, root) or _adopt(entry, root)
            if trusted:
                say(f"ok        {dest} (already present, {trusted})")
                paths.append(dest)
                continue
            # never overwrite a file the user may have put there on purpose without being asked
            recorded = read_manifest(root).get(entry.path, {}).get("sha256")
            expected = " and from ".join(filter(None, (entry.sha256 and f"the pinned file (sha256 {entry.sha256})",
                                                       recorded and f"the recorded download (sha256 {recorded})"))
                                    ) or "every known copy (none is pinned, no download of it is recorded)"
            raise DataError(f"{dest} exists but differs from {expected}; pass --force to replace it with a download "
                            f"from {entry.url}")
        used = _download_any(entry, root, opener, load_dataset, say)
        how = "sha256 verified" if used.sha256 else "git blob verified" if used.git_blob else "schema checked"
        say(f"ok        {dest} ({how}; sha256 recorded in {root / MANIFEST_NAME})")
        paths.append(dest)
    return paths


def _load_dataset(*args, **kwargs):
    import datasets

    return datasets.load_dataset(*args, **kwargs)


def fetch(group: str, data_dir: Optional[Union[str, Path]] = None, force: bool = False, opener: Optional[Opener] = None,
          *, echo: Optional[Echo] = print, load_dataset: Optional[Callable] = None) -> list[Path]:
    """Download the files of ``group`` (a group, ``all``, or a ``--data`` name) into ``data_dir`` (default: where the
    loaders look) and return their paths. Each file comes from its first source that passes the checks (its authors'
    release first, then a pinned copy). Files already present with the pinned or recorded sha256 are kept unless
    ``force``. ``opener(url)`` returns the body as bytes or a binary file (default: urllib, 60 s timeout);
    ``load_dataset`` reads hub dataset sources (default: ``datasets.load_dataset``)."""
    return _fetch_files(select(group), data_dir, force, opener, echo, load_dataset)


@dataclass(frozen=True)
class Check:
    entry: DataFile
    path: Path
    status: str  # "ok", "missing", "differs" or "unrecorded" (present, but neither pinned nor recorded)
    got: Optional[str] = None  # sha256 of a present file
    how: str = ""  # what it was compared with


def _check(entry: DataFile, root: Path, manifest: dict[str, dict]) -> Check:
    path = root / entry.path
    if not path.exists() and not path.is_symlink():
        return Check(entry, path, "missing")
    got = sha256_file(path)
    recorded = manifest.get(entry.path)
    if recorded:
        same = recorded.get("sha256") == got
        how = f"recorded {recorded.get('downloaded', '?')} from {recorded.get('source', '?')}"
        return Check(entry, path, "ok" if same else "differs", got, how if same else f"{how}: sha256 {recorded.get('sha256')}")
    if entry.sha256:
        same = got == entry.sha256
        return Check(entry, path, "ok" if same else "differs", got, "the pinned sha256" if same else f"pinned sha256 {entry.sha256}")
    return Check(entry, path, "unrecorded", got, "no pinned sha256 and no download record")


def verify(group: str, data_dir: Optional[Union[str, Path]] = None) -> list[Check]:
    """Hash the files of ``group`` present under ``data_dir`` against the sha256 recorded at their download (the
    manifest), else the pinned sha256."""
    root = default_data_dir(data_dir)
    manifest = read_manifest(root)
    return [_check(entry, root, manifest) for entry in select(group)]


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _presence(path: Path, entry: DataFile) -> str:
    # `list` stays fast: existence and size only; `verify` hashes
    if not path.exists():
        return "missing"
    return "present" if entry.size is None or path.stat().st_size == entry.size else "present (not the pinned copy)"


def format_listing(data_dir: Optional[Union[str, Path]] = None) -> str:
    root = default_data_dir(data_dir)
    lines = [f"data dir: {root}", ""]
    for group, about in GROUPS.items():
        files = select(group)
        here = sum((root / f.path).exists() for f in files)
        lines.append(f"{group}  ({here}/{len(files)} present)  {about}")
        for f in files:
            used_as = f"--data {', '.join(f.datasets)}" if f.datasets else "--set stats_text=<data dir>/" + f.path
            lines.append(f"  {_presence(root / f.path, f):<8} {f.path:<46} {_size(f.size):>8}  {used_as}")
            lines.append(f"           from {' , then '.join(s.url for s in f.sources)}")
        lines.append(f"  licence: {'; '.join(dict.fromkeys(f.licence for f in files))}")
        lines.append("")
    lines.append(f"get:    lightning-edit data get NAME [NAME ...] [--data-dir DIR]   (NAME: {', '.join([*GROUPS, ALL])})")
    lines.append("verify: lightning-edit data verify NAME [--data-dir DIR]")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    data_dir_help = f"folder of benchmark data (default ${DATA_ENV}, else ../shared/data beside a checkout, else ~/.cache/lightning-edit/data)"
    p = argparse.ArgumentParser(
        prog="lightning-edit data",
        description="Download the benchmark files lightning-edit reads (from their authors' releases, else pinned copies; checked) to where the loaders look.",
        epilog=f"names: {', '.join(names())}. Sources and licences: {docs_link('data.md')}",
    )
    sub = p.add_subparsers(dest="command", metavar="{get,list,verify}")
    get = sub.add_parser("get", help="download and verify files", description="Download and verify files.")
    get.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join([*GROUPS, ALL])} or a --data dataset name")
    get.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    get.add_argument("--force", action="store_true", help="download again even if a file is present")
    lst = sub.add_parser("list", help="show what can be downloaded and what is present", description="Show files and status.")
    lst.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    ver = sub.add_parser("verify", help="check present files against the sha256 recorded at download (else the pinned one)", description="Hash present files.")
    ver.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join([*GROUPS, ALL])} or a --data dataset name")
    ver.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    return p


def _run_verify(names_: Sequence[str], data_dir: Optional[str]) -> int:
    for name in names_:
        select(name)  # unknown names fail before any hashing
    seen: set[Path] = set()
    checks = [c for name in names_ for c in verify(name, data_dir) if not (c.path in seen or seen.add(c.path))]
    for c in checks:
        if c.status == "missing":
            print(f"missing  {c.path}  (get it with: {get_command(c.entry.group, data_dir)})")
        else:
            label = {"ok": "ok", "differs": "DIFFERS", "unrecorded": "unknown"}[c.status]
            print(f"{label:<8} {c.path}  sha256 {c.got}  ({c.how})")
    bad = [c for c in checks if c.status == "differs"]
    if bad:
        print(f"error: {len(bad)} file(s) differ from the pinned or recorded ones; `lightning-edit data get NAME --force` "
              "replaces them", file=sys.stderr)
        return 1
    if all(c.status == "missing" for c in checks):
        print("error: none of these files is present, nothing verified", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`lightning-edit data get|list|verify`; returns the exit status (0 ok, 1 verification failed, 2 error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help and usage errors: return the status instead of exiting the caller
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        if args.command == "get":
            files = _select_many(args.names)
            print(f"data dir: {default_data_dir(args.data_dir)}")
            _fetch_files(files, args.data_dir, args.force, None, print)
            return 0
        if args.command == "list":
            print(format_listing(args.data_dir))
            return 0
        if args.command == "verify":
            return _run_verify(args.names, args.data_dir)
        parser.print_help(sys.stderr)
        return 2
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

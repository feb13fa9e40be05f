"""`lightning-edit data`: download the benchmark files the loaders read, verified, to where the loaders look.

Every file is pinned: a raw.githubusercontent.com URL at a fixed commit, its size and its sha256. A download is
written under a temporary name beside its destination, checked, and only then renamed into place, so the final
name never holds a partial or unverified file. See docs/data.md for the table of sources and licences.
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

from ..errors import DataError, LightningEditError, docs_link
from .loaders import DATA_ENV, DATASETS, default_data_dir, get_command

WIKITEXT_PATH = "text/wikitext-2/wiki.test.raw"  # full WikiText-2 raw test split, relative to the data directory
TIMEOUT_S = 60.0
CHUNK = 1 << 16

# An opener maps a URL to its body: bytes, or a binary file-like object (closed after reading when it can be).
Opener = Callable[[str], Union[bytes, BinaryIO]]
Echo = Callable[[str], None]

# What a failing network looks like (HTTPError is a URLError; socket.timeout is TimeoutError since 3.10).
NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException)


@dataclass(frozen=True)
class DataFile:
    """One downloadable file, pinned by size and sha256."""

    group: str          # `data get` name it belongs to
    path: str           # destination relative to the data directory (what DATASETS / the statistics code read)
    url: str            # pinned source (a commit, never a branch, so the bytes cannot change under the hash)
    sha256: str
    size: int           # bytes
    licence: str
    home: str           # citation and official home page
    datasets: tuple[str, ...] = ()  # `--data` names that read this file

    @property
    def browse_url(self) -> str:
        """The GitHub page of the pinned file (for people; `url` is what is downloaded)."""
        prefix = "https://raw.githubusercontent.com/"
        if not self.url.startswith(prefix):
            return self.url
        owner, repo, commit, rest = self.url[len(prefix):].split("/", 3)
        return f"https://github.com/{owner}/{repo}/blob/{commit}/{rest}"


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


# Provenance of each entry: /work/shared/data/*/SOURCE.md (origin repo, commit, path, git blob SHA-1, size); the
# sha256 values were computed from those byte-identical copies.
_KS = ("Jometeorie/KnowledgeSpread", "d1a8d1ed5367e66010d4d9b081ab388b46c2438c")
_LTE = ("YJiangcm/LTE", "32d444873e794f3f4f7866e504f15c477e8568b3")
_ZSRE_HOME = "Levy et al. 2017 (zsRE); Mitchell et al. 2022 (MEND); Yao et al. 2023 (portability); https://github.com/zjunlp/EasyEdit"
_ROME_HOME = "Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME); https://rome.baulab.info/"
_KNOWEDIT_HOME = ("Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs (KnowEdit); official home: "
                  "https://huggingface.co/datasets/zjunlp/KnowEdit")
_KNOWEDIT_LICENCE = "MIT (KnowEdit/EasyEdit; host repo YJiangcm/LTE: Apache-2.0)"

REGISTRY: tuple[DataFile, ...] = (
    DataFile("zsre", DATASETS["zsre"],
             _github("shariqahn/EasyEdit", "216a4cd009eaf5254add0890829fd93077124f77",
                     "data/notebook/zsre_mend_eval_portability_gpt4.json"),
             "0cf155da229b2eccae19fcfe5f7a09523363d357f5f15508d1521f495ad5ecd9", 842_861,
             "MIT (EasyEdit; zsRE data via MEND)", _ZSRE_HOME, ("zsre",)),
    DataFile("zsre", DATASETS["zsre-train"], _github(*_KS, "data/zsre/zsre_mend_train-1k.json"),
             "09dbb446f4afa1e500e051806430d286ef260fa6dd89e3590a9756f8b060a229", 524_937,
             "MIT (MEND/EasyEdit data; host repo: Apache-2.0)", _ZSRE_HOME, ("zsre-train",)),
    DataFile("counterfact", DATASETS["counterfact"], _github(*_KS, "data/counterfact/counterfact-edit.json"),
             "20c225e6299b3c5b2c569bd9103aa212806e0d1e6e0c307de5c379773979b967", 3_850_773,
             "MIT (CounterFact, from ROME; host repo: Apache-2.0)", _ROME_HOME, ("counterfact",)),
    DataFile("counterfact", DATASETS["counterfact-train"], _github(*_KS, "data/counterfact/counterfact-train.json"),
             "bb40e12c7b740d6859e521674cf438f063c7c3e444bc1b449e74cdd0900772d0", 3_849_872,
             "MIT (CounterFact, from ROME; host repo: Apache-2.0)", _ROME_HOME, ("counterfact-train",)),
    DataFile("counterfact", DATASETS["counterfact-rome"],
             _github("zhrli324/RLEdit", "1822b1c79f90eceeba93f3d09aeec6a60d9a25d5", "data/dsets/counterfact/cf_preview.json"),
             "305fcef4d008743a01d19a6c4677d70a1bb4181d5cc71fd5a1fc51b598c69745", 15_350,
             "MIT (ROME's CounterFact; host repo states none)", _ROME_HOME, ("counterfact-rome",)),
    DataFile("knowedit", DATASETS["knowedit-counterfact"], _github(*_LTE, "EasyEdit/data/knowedit/wiki_counterfact/train_cf.json"),
             "acdc01922afab1d4122249a2c22ad8c1e0e86506dd7a28eec698f22d175ebf9d", 1_388_264,
             _KNOWEDIT_LICENCE, _KNOWEDIT_HOME, ("knowedit-counterfact",)),
    DataFile("knowedit", DATASETS["knowedit-recent"], _github(*_LTE, "EasyEdit/data/knowedit/wiki_recent/recent_train.json"),
             "5856107412ddeeae2ceea2a15ebd125fd7c86ac8d62b933b095514304a77c73a", 1_837_416,
             _KNOWEDIT_LICENCE, _KNOWEDIT_HOME, ("knowedit-recent",)),
    DataFile("knowedit", DATASETS["knowedit-wikibio"], _github(*_LTE, "EasyEdit/data/knowedit/WikiBio/wikibio-train-all.json"),
             "6ee88049c1c6c00d6f81d2d942350b6ec78b45917d2ec8a3eec3eafa89c2e209", 454_217,
             _KNOWEDIT_LICENCE, _KNOWEDIT_HOME, ("knowedit-wikibio",)),
    DataFile("mquake", DATASETS["mquake"],
             _github("jianghoucheng/AnyEdit", "fb994d225a24f987c7826c72503a4364056ab3c1", "data/AKEW/MQuAKE-CF.json"),
             "8469d4a0b8a4ff4168de987576e7ecea4754202627cd3ab3181339ffc411ddc5", 3_183_842,
             "MIT (MQuAKE, princeton-nlp/MQuAKE); the AKEW subset's host repo states none",
             "Zhong et al. 2023 (MQuAKE), https://github.com/princeton-nlp/MQuAKE; AKEW subset of MQuAKE-CF", ("mquake",)),
    DataFile("known_1000", DATASETS["known_1000"],
             _github("MaxLEAF3824/gpt_re", "a0134700ce4c073ad92b75facb15ae180c9b3e24", "data/known_1000.json"),
             "685ed2a0c3e8323921ea8a945b237cfe75e1f4948b9dda7a92aa6c2401f1d9df", 343_226,
             "MIT (ROME release; host repo states none)", _ROME_HOME, ("known_1000",)),
    DataFile("wikitext", WIKITEXT_PATH,
             _github("Tylogi/TyloQuant", "aa7023b3a96905a70f7a7ce9836834f02694c670", "data/wikitext-2-raw/wiki.test.raw"),
             "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c", 1_290_547,
             "CC BY-SA 3.0 (WikiText; host repo: Apache-2.0)",
             "Merity et al. 2016, Pointer Sentinel Mixture Models (WikiText-2 raw, test split); "
             "https://huggingface.co/datasets/Salesforce/wikitext"),
)

GROUPS: dict[str, str] = {
    "zsre": "ZsRE (MEND/EasyEdit format): eval set with portability + 1k training subset",
    "counterfact": "CounterFact: EasyEdit edit/train splits + ROME-format preview",
    "knowedit": "KnowEdit: WikiData counterfact, WikiData recent, WikiBio",
    "mquake": "MQuAKE-CF (AKEW subset, 354 multi-hop cases)",
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


def _network_error(entry: DataFile, root: Path, err: BaseException) -> DataError:
    if isinstance(err, urllib.error.HTTPError):
        reason = f"HTTP {err.code} {err.reason}"
        err.close()  # an HTTPError holds the open response
    else:
        reason = str(getattr(err, "reason", None) or err) or type(err).__name__
    return DataError(
        f"could not download {entry.url} ({reason}): this machine seems offline, or the URL failed. "
        f"To do it by hand: download {entry.url} to {root / entry.path} (sha256 {entry.sha256}, {entry.size} bytes), "
        f"then check it with: lightning-edit data verify {entry.group} --data-dir {shlex.quote(str(root))}"
    )


def _download(entry: DataFile, root: Path, opener: Opener) -> Path:
    """Stream ``entry.url`` to a temporary name beside its destination, check size and sha256, then rename into place."""
    dest = root / entry.path
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {dest.parent}: {err}; choose a writable folder with --data-dir") from None
    # per-process name in the same folder: concurrent runs do not collide and os.replace stays on one filesystem
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.part"
    digest, size, too_big = hashlib.sha256(), 0, False
    try:
        try:
            with open(tmp, "wb") as out:
                for block in _chunks(opener(entry.url)):
                    size += len(block)
                    if size > entry.size:  # a wrong page (portal, error HTML) or a changed file: stop early
                        too_big = True
                        break
                    digest.update(block)
                    out.write(block)
        except NETWORK_ERRORS as err:
            raise _network_error(entry, root, err) from None
        except DataError:
            raise
        except OSError as err:
            raise DataError(f"cannot write {tmp}: {err}; choose a writable folder with --data-dir") from None
        got = digest.hexdigest()
        if too_big or size != entry.size or got != entry.sha256:
            got_text = f"more than {entry.size} bytes (download stopped)" if too_big else f"sha256 {got} ({size} bytes)"
            raise DataError(
                f"{entry.path}: the download from {entry.url} does not match the pinned file: expected sha256 "
                f"{entry.sha256} ({entry.size} bytes), got {got_text}. Nothing was written to {dest}. The upstream "
                f"file may have changed, or the download was corrupted; try again or download it by hand and compare."
            )
        try:
            os.replace(tmp, dest)  # atomic: the final name holds the old file or the verified one, never a partial
        except OSError as err:
            raise DataError(f"cannot move the verified download into {dest}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_files(files: Sequence[DataFile], data_dir: Optional[Union[str, Path]], force: bool, opener: Optional[Opener],
                 echo: Optional[Echo]) -> list[Path]:
    root = default_data_dir(data_dir)
    opener = opener or _urlopen
    say = echo or (lambda _msg: None)
    paths = []
    for entry in files:
        dest = root / entry.path
        if dest.exists() and not force:
            if sha256_file(dest) == entry.sha256:
                say(f"ok        {dest} (already present, sha256 verified)")
                paths.append(dest)
                continue
            # never overwrite a file the user may have put there on purpose without being asked
            raise DataError(f"{dest} exists but differs from the pinned file (sha256 {entry.sha256}); "
                            f"pass --force to replace it with the download from {entry.url}")
        say(f"download  {entry.url}\n       -> {dest} ({_size(entry.size)})")
        _download(entry, root, opener)
        say(f"ok        {dest} (sha256 verified)")
        paths.append(dest)
    return paths


def fetch(group: str, data_dir: Optional[Union[str, Path]] = None, force: bool = False, opener: Optional[Opener] = None,
          *, echo: Optional[Echo] = print) -> list[Path]:
    """Download the files of ``group`` (a group, ``all``, or a ``--data`` name) into ``data_dir`` (default: where the
    loaders look) and return their paths. Files already present with the pinned sha256 are kept unless ``force``.
    ``opener(url)`` returns the body as bytes or a binary file (default: urllib, 60 s timeout)."""
    return _fetch_files(select(group), data_dir, force, opener, echo)


@dataclass(frozen=True)
class Check:
    entry: DataFile
    path: Path
    status: str  # "ok", "missing" or "differs"
    got: Optional[str] = None  # sha256 of a differing file


def verify(group: str, data_dir: Optional[Union[str, Path]] = None) -> list[Check]:
    """Hash the files of ``group`` that are present under ``data_dir`` against the pinned sha256."""
    root = default_data_dir(data_dir)
    checks = []
    for entry in select(group):
        path = root / entry.path
        if not path.exists() and not path.is_symlink():
            checks.append(Check(entry, path, "missing"))
            continue
        got = sha256_file(path)
        checks.append(Check(entry, path, "ok") if got == entry.sha256 else Check(entry, path, "differs", got))
    return checks


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _presence(path: Path, entry: DataFile) -> str:
    # `list` stays fast: existence and size only; `verify` hashes
    if not path.exists():
        return "missing"
    return "present" if path.stat().st_size == entry.size else "differs (size)"


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
        description="Download the benchmark files lightning-edit reads (pinned, sha256-verified) to where the loaders look.",
        epilog=f"names: {', '.join(names())}. Sources and licences: {docs_link('data.md')}",
    )
    sub = p.add_subparsers(dest="command", metavar="{get,list,verify}")
    get = sub.add_parser("get", help="download and verify files", description="Download and verify files.")
    get.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join([*GROUPS, ALL])} or a --data dataset name")
    get.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    get.add_argument("--force", action="store_true", help="download again even if a file is present")
    lst = sub.add_parser("list", help="show what can be downloaded and what is present", description="Show files and status.")
    lst.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    ver = sub.add_parser("verify", help="check present files against the pinned sha256", description="Hash present files.")
    ver.add_argument("names", nargs="+", metavar="NAME", help=f"{', '.join([*GROUPS, ALL])} or a --data dataset name")
    ver.add_argument("--data-dir", default=None, metavar="DIR", help=data_dir_help)
    return p


def _run_verify(names_: Sequence[str], data_dir: Optional[str]) -> int:
    for name in names_:
        select(name)  # unknown names fail before any hashing
    seen: set[Path] = set()
    checks = [c for name in names_ for c in verify(name, data_dir) if not (c.path in seen or seen.add(c.path))]
    for c in checks:
        if c.status == "ok":
            print(f"ok       {c.path}")
        elif c.status == "missing":
            print(f"missing  {c.path}  (get it with: {get_command(c.entry.group, data_dir)})")
        else:
            print(f"DIFFERS  {c.path}: expected sha256 {c.entry.sha256}, got {c.got}")
    bad = [c for c in checks if c.status == "differs"]
    if bad:
        print(f"error: {len(bad)} file(s) differ from the pinned ones; `lightning-edit data get NAME --force` replaces them",
              file=sys.stderr)
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

"""`lightning-edit data`: the pinned registry, verified downloads (through an injected opener: no network), the CLI."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import urllib.error
from pathlib import Path

import pytest

from lightning_edit.data import DATASET_GROUPS, DATASETS, load_requests
from lightning_edit.data import fetch as F
from lightning_edit.errors import DataError

SHARED = Path("/work/shared/data")  # the workshop's byte-identical copies, when this machine has them


def _no_network(url: str):
    raise AssertionError(f"the test tried to download {url}")


def _fake_entry(monkeypatch, records: list[dict], name: str = "known_1000") -> tuple[F.DataFile, bytes]:
    """Replace the registry entry of ``name`` by one pinned to synthetic bytes (so tests need no shared data)."""
    body = json.dumps(records).encode()
    [old] = [f for f in F.REGISTRY if name in f.datasets]
    new = dataclasses.replace(old, url="https://example.invalid/" + name, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    monkeypatch.setattr(F, "REGISTRY", tuple(new if f is old else f for f in F.REGISTRY))
    return new, body


KNOWN = [{"known_id": 0, "subject": "Paris", "attribute": "France", "template": "{} is in", "prompt": "Paris is in",
          "prediction": "France", "relation_id": "P17"}]


def test_registry_covers_every_dataset_and_the_wikitext_path():
    by_path = {f.path: f for f in F.REGISTRY}
    assert len(by_path) == len(F.REGISTRY), "two entries share a destination"
    for name, rel in DATASETS.items():
        assert rel in by_path, f"{name} ({rel}) cannot be downloaded"
        assert by_path[rel].group == DATASET_GROUPS[name] and name in by_path[rel].datasets
        # a name that is also a group (zsre, counterfact, ...) gets the whole group, other names their one file
        assert F.select(name) == (F.select(DATASET_GROUPS[name]) if name in F.GROUPS else [by_path[rel]])
    assert set(DATASET_GROUPS) == set(DATASETS)
    assert by_path["text/wikitext-2/wiki.test.raw"].group == "wikitext"
    assert {f.group for f in F.REGISTRY} == set(F.GROUPS)
    assert [len(F.select(g)) for g in ("zsre", "counterfact", "knowedit", "mquake", "known_1000", "wikitext")] == [2, 3, 3, 1, 1, 1]
    assert F.select("all") == list(F.REGISTRY)
    for f in F.REGISTRY:  # pinned to a commit, never a branch
        owner_repo_commit = f.url.removeprefix("https://raw.githubusercontent.com/").split("/")
        assert len(owner_repo_commit[2]) == 40 and len(f.sha256) == 64 and f.size > 0 and f.licence and f.home
        assert f.browse_url.startswith("https://github.com/") and "/blob/" in f.browse_url
    assert "zjunlp/KnowEdit" in F.select("knowedit")[0].home


def test_registry_matches_shared_copies():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    for f in F.REGISTRY:
        path = SHARED / f.path
        if path.exists():
            assert path.stat().st_size == f.size and F.sha256_file(path) == f.sha256, f.path


def test_fetch_real_bytes_lands_where_the_loader_reads(tmp_path):
    if not (SHARED / DATASETS["zsre"]).exists():
        pytest.skip(f"{SHARED} not present")
    urls: dict[str, Path] = {f.url: SHARED / f.path for f in F.REGISTRY}
    served = []

    def opener(url: str):
        served.append(url)
        return open(urls[url], "rb")  # file-like, like urllib's response

    paths = F.fetch("zsre", data_dir=tmp_path, opener=opener, echo=None)
    assert paths == [tmp_path / DATASETS["zsre"], tmp_path / DATASETS["zsre-train"]] and len(served) == 2
    assert len(load_requests("zsre", data_dir=tmp_path)) == 1037
    assert not list(tmp_path.rglob("*.part"))
    assert all(c.status == "ok" for c in F.verify("zsre", tmp_path))


def test_fetch_synthetic_then_skip_then_force(tmp_path, monkeypatch, capsys):
    entry, body = _fake_entry(monkeypatch, KNOWN)
    [path] = F.fetch("known_1000", data_dir=tmp_path, opener=lambda url: body)
    assert path == tmp_path / DATASETS["known_1000"] and path.read_bytes() == body
    req = load_requests("known_1000", data_dir=tmp_path)[0]
    assert (req.subject, req.target_new) == ("Paris", "France")
    # present and correct: kept, no download, and it says so
    capsys.readouterr()
    assert F.fetch("known_1000", data_dir=tmp_path, opener=_no_network) == [path]
    assert "already present" in capsys.readouterr().out
    # --force downloads again
    calls = []
    F.fetch("known_1000", data_dir=tmp_path, force=True, opener=lambda url: calls.append(url) or io.BytesIO(body), echo=None)
    assert calls == [entry.url] and path.read_bytes() == body


def test_wrong_bytes_raise_and_leave_nothing(tmp_path, monkeypatch):
    entry, body = _fake_entry(monkeypatch, KNOWN)
    wrong = body[:-1] + b"!"  # same size, other content
    with pytest.raises(DataError) as info:
        F.fetch("known_1000", data_dir=tmp_path, opener=lambda url: wrong, echo=None)
    msg = str(info.value)
    assert entry.path in msg and entry.sha256 in msg and hashlib.sha256(wrong).hexdigest() in msg
    assert list(tmp_path.rglob("*.*")) == []  # neither the final name nor a temporary file
    # longer than pinned: stopped early, same outcome
    with pytest.raises(DataError, match="more than"):
        F.fetch("known_1000", data_dir=tmp_path, opener=lambda url: body + b" " * 10, echo=None)
    assert list(tmp_path.rglob("*.*")) == []


def test_a_differing_present_file_is_kept_without_force(tmp_path, monkeypatch):
    entry, body = _fake_entry(monkeypatch, KNOWN)
    dest = tmp_path / entry.path
    dest.parent.mkdir(parents=True)
    dest.write_text("[]")
    with pytest.raises(DataError, match="--force"):
        F.fetch("known_1000", data_dir=tmp_path, opener=_no_network, echo=None)
    assert dest.read_text() == "[]"
    assert [c.status for c in F.verify("known_1000", tmp_path)] == ["differs"]


@pytest.mark.parametrize("error", [urllib.error.URLError("[Errno -2] Name or service not known"), socket.timeout("timed out"),
                                   urllib.error.HTTPError("https://x", 404, "Not Found", {}, io.BytesIO())])
def test_network_failure_is_a_clear_data_error(tmp_path, monkeypatch, error):
    entry, _ = _fake_entry(monkeypatch, KNOWN)

    def opener(url):
        raise error

    with pytest.raises(DataError) as info:
        F.fetch("known_1000", data_dir=tmp_path, opener=opener, echo=None)
    msg = str(info.value)
    assert "offline" in msg and entry.url in msg and str(tmp_path / entry.path) in msg and "by hand" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback
    assert not (tmp_path / entry.path).exists() and not list(tmp_path.rglob("*.part"))


def test_failure_while_reading_leaves_nothing(tmp_path, monkeypatch):
    entry, body = _fake_entry(monkeypatch, KNOWN)

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise socket.timeout("timed out")
            return super().read(10)

    with pytest.raises(DataError, match="offline"):
        F.fetch("known_1000", data_dir=tmp_path, opener=lambda url: Broken(body), echo=None)
    assert list(tmp_path.rglob("*.*")) == []


def test_not_found_error_names_the_get_command(tmp_path):
    for name in DATASETS:
        with pytest.raises(DataError) as info:
            load_requests(name, data_dir=tmp_path)
        msg = str(info.value)
        assert f"lightning-edit data get {DATASET_GROUPS[name]} --data-dir {tmp_path}" in msg
        assert f"python edit.py data get {DATASET_GROUPS[name]}" in msg


def test_cli(tmp_path, monkeypatch, capsys):
    assert F.main(["--help"]) == 0
    assert "lightning-edit data" in capsys.readouterr().out
    assert F.main(["get", "--help"]) == 0
    capsys.readouterr()
    assert F.main(["get", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data name 'nope'") and "zsre" in err and "Traceback" not in err
    assert F.main([]) == 2
    capsys.readouterr()

    assert F.main(["list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(g in out for g in F.GROUPS) and "missing" in out and "CC BY-SA 3.0" in out
    assert F.main(["verify", "known_1000", "--data-dir", str(tmp_path)]) == 1  # nothing present
    capsys.readouterr()

    # `get` through the CLI, offline: one clean error line, exit 2
    def offline(url):
        raise urllib.error.URLError("no route")

    monkeypatch.setattr(F, "_urlopen", offline)
    assert F.main(["get", "known_1000", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and "offline" in err

    entry, body = _fake_entry(monkeypatch, KNOWN)
    monkeypatch.setattr(F, "_urlopen", lambda url: io.BytesIO(body))
    assert F.main(["get", "known_1000", "--data-dir", str(tmp_path)]) == 0
    assert F.main(["verify", "known_1000", "--data-dir", str(tmp_path)]) == 0
    assert f"ok       {tmp_path / entry.path}" in capsys.readouterr().out
    (tmp_path / entry.path).write_bytes(body[:-1] + b" ")
    assert F.main(["verify", "known_1000", "--data-dir", str(tmp_path)]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_docs_table_matches_the_registry():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for f in F.REGISTRY:
        assert f.browse_url in docs and f"`{f.path}`" in docs and f"data get {f.group}`" in docs, f.path

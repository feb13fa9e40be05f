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
from lightning_edit.data.integrity import SCHEMAS, check_schema, read_manifest
from lightning_edit.errors import DataError

SHARED = Path("/work/shared/data")  # the workshop's byte-identical copies, when this machine has them


def _no_network(url: str):
    raise AssertionError(f"the test tried to download {url}")


def _fake_entry(monkeypatch, records: list[dict], name: str = "known_1000") -> tuple[F.DataFile, bytes]:
    """Replace the registry entry of ``name`` by one pinned to synthetic bytes (so tests need no shared data)."""
    body = json.dumps(records).encode()
    [old] = [f for f in F.REGISTRY if name in f.datasets]
    source = F.Source("https://example.invalid/" + name, sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    new = dataclasses.replace(old, sources=(source,))
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
    groups = ("zsre", "counterfact", "counterfact-rome", "knowedit", "mquake", "known_1000", "wikitext")
    assert [len(F.select(g)) for g in groups] == [3, 3, 4, 3, 3, 1, 1]
    assert F.select("all") == list(F.REGISTRY)
    for f in F.REGISTRY:
        assert f.sources and f.licence and f.home and f.schema in SCHEMAS
        for s in f.sources:
            if s.url.startswith("https://raw.githubusercontent.com/"):  # a copy at a commit, never a branch
                assert len(s.url.split("/")[5]) == 40 and s.pinned, s.url
            assert (s.sha256 is None) == (s.size is None) and (s.sha256 is None or len(s.sha256) == 64)
    # the authors' releases come first, the pinned copies after them
    assert F.select("knowedit-recent")[0].url.startswith(F.KNOWEDIT_HUB)
    assert F.select("knowedit-recent")[0].sources[-1].url.startswith("https://raw.githubusercontent.com/YJiangcm/LTE/")
    assert [f.url for f in F.select("counterfact-rome")] == [F.ROME_DSETS + n for n in (
        "counterfact.json", "attribute_snippets.json", "idf.npy", "tfidf_vocab.json")]
    assert F.select("counterfact-rome")[0].sources[0].records == 21_919
    assert F.select("zsre-memit")[0].url == F.MEMIT_DSETS + "zsre_mend_eval.json"
    assert F.select("mquake-cf-3k")[0].url.startswith("https://raw.githubusercontent.com/princeton-nlp/MQuAKE/")
    assert F.select("wikitext")[0].url == F.HUB_DATASET + "Salesforce/wikitext/wikitext-2-raw-v1/test"
    assert "zjunlp/KnowEdit" in F.select("knowedit")[0].home


def test_registry_matches_shared_copies():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present")
    for f in F.REGISTRY:
        path = SHARED / f.path
        if path.exists() and f.sha256:
            assert path.stat().st_size == f.size and F.sha256_file(path) == f.sha256, f.path
            check_schema(path, f.schema, None, f.path, "the shared copy")  # the real files pass their own checks


def test_fetch_real_bytes_lands_where_the_loader_reads(tmp_path):
    if not (SHARED / DATASETS["zsre"]).exists():
        pytest.skip(f"{SHARED} not present")
    urls: dict[str, Path] = {f.url: SHARED / f.path for f in F.REGISTRY}
    # MEMIT's zsRE eval set (not in the shared copies) is served a file of the same MEND layout
    urls[F.MEMIT_DSETS + "zsre_mend_eval.json"] = SHARED / DATASETS["zsre"]
    served = []

    def opener(url: str):
        served.append(url)
        return open(urls[url], "rb")  # file-like, like urllib's response

    paths = F.fetch("zsre", data_dir=tmp_path, opener=opener, echo=None)
    assert paths == [tmp_path / DATASETS[n] for n in ("zsre", "zsre-train", "zsre-memit")] and len(served) == 3
    assert len(load_requests("zsre", data_dir=tmp_path)) == 1037
    assert not list(tmp_path.rglob("*.part"))
    checks = F.verify("zsre", tmp_path)
    assert [c.status for c in checks] == ["ok"] * 3 and all(c.got == F.sha256_file(c.path) for c in checks)
    manifest = read_manifest(tmp_path)
    assert manifest[DATASETS["zsre-memit"]]["source"] == F.MEMIT_DSETS + "zsre_mend_eval.json"
    assert manifest[DATASETS["zsre-memit"]]["records"] == 1037
    assert manifest[DATASETS["zsre"]]["sha256"] == F.select("zsre")[0].sha256


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
    assert err.startswith("error: known_1000/known_1000.json: every source failed: 1) could not download "
                          + F.ROME_DSETS) and "offline" in err and "2) could not download https://raw.githubusercontent" in err

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
        assert f"`{f.path}`" in docs and f"data get {f.group}`" in docs, f.path
        assert all(s.browse_url in docs for s in f.sources), f.path


KNOWEDIT = [{"subject": "Paris", "prompt": "Paris is the capital of", "target_new": "Italy", "ground_truth": ["France"],
             "portability": {}, "locality": {}}]


def _two_sources(monkeypatch, name: str, canonical: F.Source, pinned_body: bytes) -> F.DataFile:
    """Replace ``name``'s entry by one with ``canonical`` first and a pinned copy of ``pinned_body`` after it."""
    [old] = [f for f in F.REGISTRY if name in f.datasets or (not f.datasets and f.group == name)]
    pinned = F.Source("https://example.invalid/pinned", sha256=hashlib.sha256(pinned_body).hexdigest(), size=len(pinned_body))
    new = dataclasses.replace(old, sources=(canonical, pinned))
    monkeypatch.setattr(F, "REGISTRY", tuple(new if f is old else f for f in F.REGISTRY))
    return new


def test_the_authors_release_first_then_the_pinned_copy(tmp_path, monkeypatch):
    pinned_body = json.dumps(KNOWEDIT).encode()
    entry = _two_sources(monkeypatch, "knowedit-recent", F.Source(F.KNOWEDIT_HUB + "wiki_recent/recent_train.json"),
                         pinned_body)
    hub_body = json.dumps(KNOWEDIT * 2).encode()  # the hub's bytes differ from the pinned copy's: checked by schema
    said: list[str] = []
    [path] = F.fetch("knowedit-recent", data_dir=tmp_path, opener={entry.url: hub_body}.__getitem__, echo=said.append)
    assert path.read_bytes() == hub_body and "schema checked" in said[-1]
    record = read_manifest(tmp_path)[entry.path]
    assert record == {**record, "source": entry.url, "records": 2, "sha256": hashlib.sha256(hub_body).hexdigest()}
    # present and as recorded: kept; verify says what it compared with
    assert F.fetch("knowedit-recent", data_dir=tmp_path, opener=_no_network, echo=None) == [path]
    [check] = F.verify("knowedit-recent", tmp_path)
    assert check.status == "ok" and "recorded" in check.how and entry.url in check.how
    # changed after download: verify reports it, get refuses to overwrite without --force
    path.write_bytes(hub_body.replace(b"Italy", b"Spain"))
    assert [c.status for c in F.verify("knowedit-recent", tmp_path)] == ["differs"]
    with pytest.raises(DataError, match="and from the recorded download .*; pass --force"):
        F.fetch("knowedit-recent", data_dir=tmp_path, opener=_no_network, echo=None)

    # the hub offline: the pinned copy, with its sha256, is used instead, and the manifest names it
    def hub_down(url: str):
        if url == entry.url:
            raise urllib.error.HTTPError(url, 503, "Service Unavailable", {}, io.BytesIO())
        return pinned_body

    said.clear()
    F.fetch("knowedit-recent", data_dir=tmp_path, force=True, opener=hub_down, echo=said.append)
    assert path.read_bytes() == pinned_body and any("HTTP 503" in s and "trying the next source" in s for s in said)
    assert read_manifest(tmp_path)[entry.path]["source"] == "https://example.invalid/pinned"
    assert [c.status for c in F.verify("knowedit-recent", tmp_path)] == ["ok"]


def test_a_release_of_the_wrong_schema_falls_back_and_both_failing_is_one_clear_error(tmp_path, monkeypatch):
    pinned_body = json.dumps(KNOWEDIT).encode()
    entry = _two_sources(monkeypatch, "knowedit-recent", F.Source(F.KNOWEDIT_HUB + "x.json"), pinned_body)
    portal = b"<html>Sign in to continue</html>"
    with pytest.raises(DataError) as info:
        F.fetch("knowedit-recent", data_dir=tmp_path, opener=lambda url: portal, echo=None)
    msg = str(info.value)
    assert msg.startswith(f"{entry.path}: every source failed: 1) ") and "knowedit schema" in msg
    assert "2) " in msg and "does not match the pinned file" in msg and "by hand" in msg
    assert not list(tmp_path.rglob("*.json"))
    F.fetch("knowedit-recent", data_dir=tmp_path, echo=None,
            opener=lambda url: portal if url == entry.url else pinned_body)
    assert (tmp_path / entry.path).read_bytes() == pinned_body


def test_wikitext_from_the_hub_through_datasets(tmp_path, monkeypatch):
    rows = [" = Robert Boulter = \n", "", " Robert Boulter is an English actor .\n"]
    calls = []

    def load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return {"text": rows}

    [path] = F.fetch("wikitext", data_dir=tmp_path, opener=_no_network, load_dataset=load_dataset, echo=None)
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]
    assert path.read_text() == " = Robert Boulter = \n\n Robert Boulter is an English actor .\n"
    assert read_manifest(tmp_path)[F.WIKITEXT_PATH]["records"] == 3  # lines

    # the hub unreachable (datasets raises its own errors): the pinned copy instead
    entry = _two_sources(monkeypatch, "wikitext", F.select("wikitext")[0].sources[0], b"pinned text\n")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)")

    F.fetch("wikitext", data_dir=tmp_path, force=True, opener=lambda url: b"pinned text\n", load_dataset=offline, echo=None)
    assert path.read_bytes() == b"pinned text\n" and read_manifest(tmp_path)[entry.path]["source"].startswith("https://example")


def test_a_pinned_commit_file_is_checked_by_its_git_blob_id(tmp_path, monkeypatch):
    body = json.dumps([{"case_id": 1, "requested_rewrite": [{"prompt": "{} is a citizen of", "subject": "Ellie Kemper",
                                                             "target_new": {"str": "Croatia"}, "target_true": {"str": "USA"},
                                                             "question": "What is Ellie Kemper's country?"}],
                        "questions": ["Q?"], "new_answer": "Zagreb"}]).encode()
    blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # what `git hash-object` prints
    [old] = F.select("mquake-cf-3k")
    new = dataclasses.replace(old, sources=(dataclasses.replace(old.sources[0], git_blob=blob),))
    monkeypatch.setattr(F, "REGISTRY", tuple(new if f is old else f for f in F.REGISTRY))
    with pytest.raises(DataError, match="not the file of that commit"):
        F.fetch("mquake-cf-3k", data_dir=tmp_path, opener=lambda url: body + b" ", echo=None)
    [path] = F.fetch("mquake-cf-3k", data_dir=tmp_path, opener=lambda url: body, echo=None)
    assert path.read_bytes() == body and len(load_requests("mquake-cf-3k", data_dir=tmp_path)) == 1

"""ROME's CounterFact from its authors' release, scored as ROME scores it: `data get counterfact-rome` through an
injected download of files of the real structure, then neighbourhood score over every neighbourhood prompt, and
fluency (n-gram entropy) and consistency (TF-IDF cosine with the reference snippets) over every generation prompt."""
from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest

from conftest import build_tiny
from lightning_edit.data import DATASETS, load_requests
from lightning_edit.data import fetch as F
from lightning_edit.data.integrity import read_manifest
from lightning_edit.data.rome_references import load_rome_references, needs_references
from lightning_edit.editors import build_editor
from lightning_edit.errors import DataError
from lightning_edit.evaluation import evaluate_editing, measure
from lightning_edit.evaluation.scoring import generated_texts
from lightning_edit.metrics import TfidfConsistency, ngram_entropy

SUBJECTS = [("Danielle Darrieux", "French", "English", "Q150", "Q1860"), ("Edwin of Northumbria", "English", "French",
            "Q1860", "Q150"), ("Toko Yasuda", "English", "French", "Q1860", "Q150")]


def rome_record(case_id: int, subject: str, true: str, new: str, true_id: str, new_id: str) -> dict:
    """One record in the layout of ROME's counterfact.json (every key it has, ten neighbourhood prompts)."""
    return {
        "case_id": case_id, "pararel_idx": 100 + case_id,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                              "target_new": {"str": new, "id": new_id}, "target_true": {"str": true, "id": true_id},
                              "subject": subject},
        "paraphrase_prompts": [f"Shayna does this and {subject} is a native speaker of",
                               f"An album was released. {subject} spoke the language"],
        "neighborhood_prompts": [f"The mother tongue of person {k} is" for k in range(10)],
        "attribute_prompts": [f"Speaker {k} is a native speaker of" for k in range(4)],
        "generation_prompts": [f"{subject}'s mother tongue is", f"Where {subject} is from, people speak the language of",
                               f"{subject} was born in"],
    }


RECORDS = [rome_record(i, *s) for i, s in enumerate(SUBJECTS)]
SNIPPETS = [{"relation_id": "P103", "target_id": tid, "target": lang,
             "samples": [{"name": f"Person {k}", "text": f"Person {k} grew up speaking {lang} at home and wrote in {lang}."}
                         for k in range(3)]} for tid, lang in (("Q150", "French"), ("Q1860", "English"))]
VOCAB = {w: i for i, w in enumerate(["french", "english", "speaking", "home", "language", "born", "mother", "tongue"])}
IDF = np.linspace(1.0, 2.5, len(VOCAB))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture
def rome_release(monkeypatch) -> dict[str, bytes]:
    """The four files of ROME's release, served by URL; the record count pinned to this synthetic file's."""
    served = {F.ROME_DSETS + "counterfact.json": json.dumps(RECORDS).encode(),
              F.ROME_DSETS + "attribute_snippets.json": json.dumps(SNIPPETS).encode(),
              F.ROME_DSETS + "idf.npy": _npy(IDF), F.ROME_DSETS + "tfidf_vocab.json": json.dumps(VOCAB).encode()}
    [old] = [f for f in F.REGISTRY if f.path == DATASETS["counterfact-rome"]]
    new = dataclasses.replace(old, sources=(dataclasses.replace(old.sources[0], records=len(RECORDS)),))
    monkeypatch.setattr(F, "REGISTRY", tuple(new if f is old else f for f in F.REGISTRY))
    return served


def test_the_real_release_is_pinned_to_21919_records():
    [entry] = [f for f in F.REGISTRY if f.path == DATASETS["counterfact-rome"]]
    assert entry.sources[0].records == 21_919 and entry.schema == "counterfact-rome"


def test_get_counterfact_rome_then_score_every_prompt_as_rome(tmp_path, rome_release, tokenizer, monkeypatch, capsys):
    served = []
    monkeypatch.setattr(F, "_urlopen", lambda url: served.append(url) or rome_release[url])
    assert F.main(["get", "counterfact-rome", "--data-dir", str(tmp_path)]) == 0
    assert sorted(served) == sorted(rome_release)
    manifest = read_manifest(tmp_path)
    assert manifest[DATASETS["counterfact-rome"]]["records"] == len(RECORDS)
    assert all(c.status == "ok" and "recorded" in c.how for c in F.verify("counterfact-rome", tmp_path))
    capsys.readouterr()
    assert F.main(["verify", "counterfact-rome", "--data-dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out  # the sha256 recorded at download, and where it came from
    assert f"sha256 {manifest[DATASETS['counterfact-rome']]['sha256']}" in shown and F.ROME_DSETS in shown

    requests = load_requests("counterfact-rome", data_dir=tmp_path)
    assert len(requests) == 3 and needs_references(requests)
    r = requests[0]
    assert (r.relation_id, r.target_new_id, len(r.generation_prompts), len(r.rephrase_prompts)) == ("P103", "Q1860", 3, 2)
    assert [p.kind for p in r.locality].count("neighborhood") == 10 and [p.kind for p in r.locality].count("attribute") == 4

    loaded = build_tiny("llama", tokenizer)
    references = load_rome_references(tmp_path)
    pre = measure(loaded, requests)
    report = evaluate_editing(loaded, build_editor("ft-m", loaded, {"layers": [1], "num_steps": 1, "lr": 1e-2}), requests,
                              fluency_tokens=4, progress=False, references=references)
    for i, (req, row) in enumerate(zip(requests, report.requests)):
        # ROME's neighbourhood score, over every one of the ten neighbourhood prompts (none of the attribute prompts)
        near = [k for k, p in enumerate(req.locality) if p.kind == "neighborhood"]
        expected = np.mean([pre[i].locality[k].mean_logprob > pre[i].locality_new[k].mean_logprob for k in near])
        assert len(near) == 10 and row["pre"]["neighborhood_score"] == pytest.approx(expected)
        # one generation per generation prompt, before and after; fluency and consistency over all of them
        for moment in ("pre", "post"):
            gens = row[f"{moment}_generations"]
            assert len(gens) == len(req.generation_prompts) == 3
            texts = generated_texts(req, gens)
            assert all(t.startswith(p) for t, p in zip(texts, req.generation_prompts))  # prompt + continuation, as ROME
            assert row[moment]["fluency"] == pytest.approx(np.mean([ngram_entropy(t) for t in texts]), abs=1e-5)
            consistency = TfidfConsistency(VOCAB, IDF)(texts, references.texts(req)).item()
            assert row[moment]["consistency"] == pytest.approx(consistency, abs=1e-6)
    assert "consistency" in report.post and "consistency" in report.pre


def test_tfidf_consistency_by_hand():
    vocab, idf = {"paris": 0, "france": 1, "city": 2}, np.array([1.0, 2.0, 3.0])
    # tf-idf: "paris city" → (1, 0, 3); "france city city" → (0, 2, 6); cosine = 18 / (sqrt(10) sqrt(40)) = 0.9
    assert TfidfConsistency(vocab, idf)(["Paris", "city"], ["France city city"]).item() == pytest.approx(0.9)
    # no shared vocabulary word: 0, not NaN (it would poison the mean)
    assert TfidfConsistency(vocab, idf)(["nothing here"], ["France"]).item() == 0.0


def test_neighbourhood_score_leaves_out_attribute_prompts(tokenizer):
    """Attribute prompts' answer is the new object: comparing P(true) with P(new) there means nothing, and counting
    them (as this code did before) pulled every neighbourhood score towards 0."""
    loaded = build_tiny("llama", tokenizer)
    req = load_requests_from(RECORDS[:1])[0]
    report = evaluate_editing(loaded, build_editor("ft-m", loaded, {"layers": [1], "num_steps": 1}), [req],
                              fluency=False, progress=False)
    [scores] = measure(loaded, [req])
    near = [scores.locality[k].mean_logprob > scores.locality_new[k].mean_logprob for k in range(10)]
    assert report.requests[0]["pre"]["neighborhood_score"] == pytest.approx(sum(near) / 10)


def load_requests_from(records: list[dict]):
    from lightning_edit.data import convert_records

    return convert_records(records)


def test_a_wrong_file_is_refused_with_its_reason(tmp_path, rome_release):
    # EasyEdit's 10,000-record reformatting is not ROME's file: refused, nothing written
    easyedit = [{"case_id": 0, "prompt": "p", "target_new": "a", "subject": "s", "ground_truth": "b",
                 "rephrase_prompt": "r", "locality_prompt": "l", "locality_ground_truth": "g"}]
    with pytest.raises(DataError, match="counterfact-rome schema") as info:
        F.fetch("counterfact-rome", data_dir=tmp_path, opener=lambda url: json.dumps(easyedit).encode(), echo=None)
    assert "/data/#integrity" in str(info.value) and not (tmp_path / DATASETS["counterfact-rome"]).exists()
    # a record short of prompts: refused, naming what is missing
    short = [{k: v for k, v in RECORDS[0].items() if k != "generation_prompts"}]
    with pytest.raises(DataError, match="generation_prompts"):
        F.fetch("counterfact-rome", data_dir=tmp_path, opener=lambda url: json.dumps(short).encode(), echo=None)
    # the right layout but not every record: refused by count
    with pytest.raises(DataError, match="holds 1 records where 3 are expected"):
        F.fetch("counterfact-rome", data_dir=tmp_path, opener=lambda url: json.dumps(RECORDS[:1]).encode(), echo=None)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.part"))


def test_missing_references_are_a_clear_error_before_any_model(tmp_path):
    with pytest.raises(DataError) as info:
        load_rome_references(tmp_path)
    msg = str(info.value)
    assert "lightning-edit data get counterfact-rome" in msg and "--no-fluency" in msg and "data/#rome-counterfact" in msg


def test_references_without_a_text_for_the_object_are_refused(tmp_path, rome_release):
    F.fetch("counterfact-rome", data_dir=tmp_path, opener=lambda url: rome_release[url], echo=None)
    refs = load_rome_references(tmp_path)
    odd = dataclasses.replace(load_requests_from(RECORDS[:1])[0], target_new_id="Q0")
    with pytest.raises(DataError, match="no reference text"):
        refs.texts(odd)
    assert math.isclose(float(refs.idf[0]), 1.0)


def test_a_file_put_there_by_hand_is_checked_and_recorded(tmp_path, rome_release):
    dest = tmp_path / DATASETS["counterfact-rome"]
    dest.parent.mkdir(parents=True)
    dest.write_bytes(json.dumps(RECORDS[:1]).encode())  # not the whole file: refused, as a download would be
    with pytest.raises(DataError, match="put there by hand.* holds 1 records where 3 are expected"):
        F.fetch("counterfact-rome", data_dir=tmp_path, opener=rome_release.__getitem__, echo=None)
    dest.write_bytes(rome_release[F.ROME_DSETS + "counterfact.json"])
    F.fetch("counterfact-rome", data_dir=tmp_path, opener=rome_release.__getitem__, echo=None)
    assert read_manifest(tmp_path)[DATASETS["counterfact-rome"]]["source"] == "present, not downloaded"
    assert [c.status for c in F.verify("counterfact-rome", tmp_path)] == ["ok"] * 4

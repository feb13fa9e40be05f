import json

import pytest

from conftest import require_data
from lightning_edit.data import DATASETS, EditDataModule, detect_format, load_requests, resolve_dataset_path
from lightning_edit.errors import DataError


def test_demo_set_is_complete():
    reqs = load_requests("demo")
    assert len(reqs) == 20
    for r in reqs:
        assert r.subject in r.prompt and r.target_true and r.rephrase_prompts and r.locality
    assert sum(bool(r.portability) for r in reqs) >= 8


def test_zsre_with_portability():
    require_data(DATASETS["zsre"])
    reqs = load_requests("zsre", n=5)
    r = reqs[0]
    assert r.prompt == "When was the inception of IAAF Combined Events Challenge?"
    assert (r.target_new, r.target_true, r.subject) == ("2006", "1998", "IAAF Combined Events Challenge")
    assert r.rephrase_prompts == ("When was the IAAF Combined Events Challenge launched?",)
    assert r.locality[0].answer == "The String"
    assert r.portability[0].answer == "Athletics"
    assert len(load_requests("zsre")) == 1037


def test_zsre_train_and_counterfact_train():
    require_data(DATASETS["zsre-train"])
    # two records of the real file have an empty field: skipped with a warning, or an error on request
    assert len(load_requests("zsre-train")) == 998  # records 534 and one other have empty fields
    with pytest.raises(DataError, match="record 534.*'target_new' is empty"):
        load_requests("zsre-train", on_invalid="raise")
    require_data(DATASETS["counterfact-train"])
    assert len(load_requests("counterfact-train", n=10)) == 10


def test_counterfact_easyedit_format():
    require_data(DATASETS["counterfact"])
    r = load_requests("counterfact", n=1)[0]
    assert (r.prompt, r.subject, r.target_new, r.target_true) == (
        "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")
    assert r.rephrase_prompts == ("Where Danielle Darrieux is from, people speak the language of",)
    assert r.locality[0].prompt == "Michel Rocard is a native speaker of" and r.locality[0].answer == "French"
    assert len(load_requests("counterfact")) == 10000


def test_counterfact_rome_format():
    require_data(DATASETS["counterfact-rome"])
    reqs = load_requests("counterfact-rome")
    assert len(reqs) == 7
    r = reqs[0]
    assert r.prompt == "The mother tongue of Danielle Darrieux is" and r.target_true == "French"
    assert len(r.rephrase_prompts) == 2
    kinds = {p.kind for p in r.locality}
    assert kinds == {"neighborhood", "attribute"}
    assert all(p.answer == "French" for p in r.locality if p.kind == "neighborhood")


def test_knowedit_files():
    require_data(DATASETS["knowedit-counterfact"])
    cf = load_requests("knowedit-counterfact")
    assert len(cf) == 1428
    assert cf[0].target_true == "France" and {p.kind for p in cf[0].portability} == {"Reasoning", "Subject_Aliasing"}
    recent = load_requests("knowedit-recent")
    assert len(recent) == 570 and recent[0].target_true is None
    assert recent[0].locality[1].answer == "Soviet Union"  # first alias of a list of alias lists
    bio = load_requests("knowedit-wikibio")
    assert len(bio) == 464 and bio[0].target_new.startswith("Mahler was drafted")


def test_mquake_and_known_1000():
    require_data(DATASETS["mquake"])
    mq = load_requests("mquake")
    assert len(mq) == 277 + 2 * 72 + 3 * 5  # one request per rewrite
    assert mq[0].prompt == "Ellie Kemper is a citizen of" and mq[0].target_new == "Croatia"
    assert mq[0].portability and mq[0].portability[0].kind == "multi_hop"
    known = load_requests("known_1000")
    assert len(known) == 1209 and known[0].target_new == "Antarctica"


def test_format_detection_and_errors(tmp_path):
    assert detect_format({"src": "q", "alt": "a", "rephrase": "r"}) == "zsre"
    assert detect_format({"requested_rewrite": {}}) == "counterfact-rome"
    assert detect_format({"requested_rewrite": []}) == "mquake"
    with pytest.raises(DataError, match="matches no known format"):
        detect_format({"foo": 1})
    with pytest.raises(DataError, match="looked for"):
        resolve_dataset_path("zsre", data_dir=tmp_path)
    with pytest.raises(DataError, match="neither a known name"):
        resolve_dataset_path("no-such-thing")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"src": "q", "alt": "", "rephrase": "r"}]))
    with pytest.raises(DataError, match="record 0.*target_new"):
        load_requests(str(bad), on_invalid="raise")
    assert load_requests(str(bad)) == []
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"prompt": "A is", "target_new": "b", "target_true": "c"}\n')
    assert load_requests(str(lines))[0].target_true == "c"


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_EDIT_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path)):
        load_requests("counterfact")


def test_datamodule_splits():
    require_data(DATASETS["zsre-train"])
    dm = EditDataModule("zsre-train", n_val=50, batch_size=4)
    dm.setup()
    assert len(dm.val_set) == 50 and len(dm.train_set) == 948
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 4 and all(hasattr(r, "target_new") for r in batch)

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
    require_data(DATASETS["counterfact-rome-preview"])
    reqs = load_requests("counterfact-rome-preview")
    assert len(reqs) == 7
    r = reqs[0]
    # every prompt of the record is carried, with the ids that file its consistency references
    assert (len(r.generation_prompts), r.relation_id, r.target_new_id) == (10, "P103", "Q1860")
    assert [p.kind for p in r.locality].count("neighborhood") == 10
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
    assert load_requests(str(bad)) == []  # every record skipped (edit.py refuses an empty run: test_cli)
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


# ---- the datasets layer: Dataset in, .select for --n/--offset, .map converters, train_test_split, hub files -----------

NATIVE = [{"prompt": f"Fact {i} is", "target_new": f"new{i}", "target_true": f"old{i}", "case_id": cid}
          for i, cid in enumerate([7, "b-1", 9, "d", 11])]


def _write(tmp_path, records, name="r.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_request_dataset_is_an_in_memory_dataset(tmp_path, capsys):
    import datasets

    from lightning_edit.data import load_request_dataset
    from lightning_edit.data.records import REQUEST_FEATURES, requests_from_dataset

    ds = load_request_dataset("demo")
    assert isinstance(ds, datasets.Dataset) and ds.features == REQUEST_FEATURES and len(ds) == 20
    assert ds.cache_files == []  # nothing written to the datasets cache in the user's home
    assert requests_from_dataset(ds) == load_requests("demo")
    assert "Map" not in capsys.readouterr().err  # datasets' progress bar is kept quiet
    # case ids of mixed types come back as they were
    assert [r.case_id for r in load_requests(str(_write(tmp_path, NATIVE)))] == [7, "b-1", 9, "d", 11]


def test_n_and_offset_select_records(tmp_path):
    from lightning_edit.errors import ConfigError

    path = str(_write(tmp_path, NATIVE))
    assert [r.case_id for r in load_requests(path, n=2, offset=1)] == ["b-1", 9]
    assert [r.case_id for r in load_requests(path, offset=3)] == ["d", 11]
    assert [r.case_id for r in load_requests(path, n=10, offset=4)] == [11]
    assert load_requests(path, n=2, offset=9) == [] and load_requests(path, n=0) == []
    with pytest.raises(ConfigError, match="must be ≥ 0"):
        load_requests(path, offset=-1)


def test_unusable_record_skipped_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path, [{"src": "q", "alt": "a", "rephrase": "r"}, {"src": "q2", "alt": "", "rephrase": "r"}])
    with caplog.at_level("WARNING"):
        assert len(load_requests(str(path))) == 1
    assert "skipped 1 unusable record(s); first: record 1" in caplog.text


def test_mquake_rows_keep_their_record_index(tmp_path):
    from lightning_edit.data import load_request_dataset

    rewrite = {"prompt": "{} is a citizen of", "subject": "A", "target_new": {"str": "X"}, "target_true": {"str": "Y"}}
    case = {"case_id": 3, "requested_rewrite": [rewrite, {**rewrite, "subject": "B"}], "questions": ["q?"], "new_answer": "Z"}
    ds = load_request_dataset(str(_write(tmp_path, [case, case])), offset=1)
    assert ds["record_index"] == [1, 1] and ds["case_id"] == ['"3-0"', '"3-1"']


def test_datamodule_split_is_train_test_split(tmp_path):
    from lightning_edit.errors import ConfigError

    path = str(_write(tmp_path, [{**NATIVE[0], "case_id": i} for i in range(30)]))

    def split(seed=0, **kw):
        dm = EditDataModule(path, seed=seed, **kw)
        dm.setup()
        return [r.case_id for r in dm.train_set.requests], [r.case_id for r in dm.val_set.requests]

    train, val = split(n_val=10)
    assert len(train) == 20 and len(val) == 10 and sorted(train + val) == list(range(30))
    assert split(n_val=10) == (train, val) and split(seed=1, n_val=10) != (train, val)
    assert len(split(n_val=10, n_train=5)[0]) == 5 and split(n_val=0)[1] == []
    with pytest.raises(ConfigError, match="'n_val' \\(30\\) leaves no training requests"):
        split(n_val=30)


def test_hub_file_is_downloaded_then_read_like_a_local_file(monkeypatch, tmp_path):
    import huggingface_hub

    local = _write(tmp_path, [NATIVE[0], {**NATIVE[1], "prompt": 3}])
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: calls.append((a, kw)) or str(local))
    url = "hf://datasets/zjunlp/KnowEdit@v1/benchmark/x.json"
    assert load_requests(url, n=1)[0].case_id == 7
    assert calls == [(("zjunlp/KnowEdit", "benchmark/x.json"), {"repo_type": "dataset", "revision": "v1"})]
    with pytest.raises(DataError, match=f"^{url}: record 1 .*field 'prompt' must be a string"):
        load_requests(url)


def test_hub_file_offline_error(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DataError) as info:
        load_requests("hf://datasets/zjunlp/KnowEdit/benchmark/wiki_counterfact/train_cf.json")
    message = str(info.value)
    assert "not in the Hugging Face cache, and the hub cannot be reached" in message
    assert "hf download --repo-type dataset zjunlp/KnowEdit benchmark/wiki_counterfact/train_cf.json" in message
    assert "give the file's local path" in message


def test_hub_urls_that_name_no_file():
    with pytest.raises(DataError, match="names the dataset repo zjunlp/KnowEdit, not a file in it.*huggingface.co/datasets/zjunlp/KnowEdit/tree/main"):
        load_requests("hf://datasets/zjunlp/KnowEdit")
    with pytest.raises(DataError, match="is written hf://datasets/OWNER/NAME\\[@REVISION\\]/PATH"):
        load_requests("hf://zjunlp/KnowEdit/train.json")
    with pytest.raises(DataError, match="neither a known name.*write hf://datasets/zjunlp/KnowEdit/<path"):
        load_requests("zjunlp/KnowEdit")


def test_statistics_text_through_a_dataset(monkeypatch, tmp_path):
    import huggingface_hub
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lightning_edit.data.text import text_dataset
    from lightning_edit.stats import StatsSource

    plain = tmp_path / "t.txt"
    plain.write_bytes(b" = Title = \n\n  First line.\n\xff bad byte\n")
    assert text_dataset(plain)["text"] == ["= Title =", "First line.", "\ufffd bad byte"]
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"text": ["", " = Title = \n", " First line.\n"]}), parquet)
    assert text_dataset(parquet)["text"] == ["= Title =", "First line."]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="needs a column 'text'"):
        text_dataset(tmp_path / "other.parquet")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: str(parquet))
    source = StatsSource.from_path("hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet")
    assert source.text_path == parquet.resolve() and source.tag.startswith("test-00000-of-00001-")


@pytest.mark.parametrize("argv, message", [
    (["--data", "hf://datasets/zjunlp/KnowEdit"], "names the dataset repo zjunlp/KnowEdit, not a file in it"),
    (["--data", "hf://datasets/zjunlp/KnowEdit/x.json"], "not in the Hugging Face cache, and the hub cannot be reached"),
    (["--method", "rome", "--set", "stats_text=hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet"],
     "field 'stats_text' hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet: not in the Hugging Face cache"),
])
def test_hub_errors_on_the_command_line(argv, message, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from lightning_edit.cli import main

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr("lightning_edit.models.load_model", refuse)
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err, err

"""Malformed request files and texts the model cannot read as written: each refused with one `error:` line naming the
file, the record and the field (and before the model loads), never a traceback or a silently different edit."""
import json
from types import SimpleNamespace

import pytest

from lightning_edit import DataError, EditRequest, PromptAnswer, RequestError, check_context_length, check_special_tokens
from lightning_edit.cli import main
from lightning_edit.data import load_requests

GOOD = {"prompt": "The capital of France is", "target_new": "Lyon", "target_true": "Paris", "subject": "France"}


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("lightning_edit.models.load_model", refuse)


@pytest.fixture(scope="module")
def small_tokenizer(smollm2):
    return smollm2.tokenizer  # the real model's (loaded through the cache wherever it is, warm or not)


def _json(value) -> bytes:
    return json.dumps(value).encode()


CASES = {
    "number": (b"42", ["the top level is a number", "not a list of records"]),
    "string": (b'"hello"', ["the top level is a string"]),
    "dict": (_json({"foo": [1, 2]}), ["the top level is one object", "put the records in a list"]),
    "data-not-list": (_json({"data": 5}), ["field 'data' must be a list of records"]),
    "record-not-object": (_json([GOOD, 7]), ["record 1 is a number, not an object"]),
    "invalid-utf8": (b'[{"prompt": "The capital of Fran\xe7e is", "target_new": "Lyon", "target_true": "Paris"}]',
                     ["is not valid UTF-8", "offset 32", "save the file as UTF-8"]),
    "empty": (b"  \n", ["is empty"]),
    "bad-json": (b'[{"prompt": "A is",]', ["neither JSON nor JSON lines", "line 1"]),
    "locality-prompt-number": (_json([{**GOOD, "locality": [{"prompt": 5, "answer": "Madrid"}]}]),
                               ["record 0", "'locality[0].prompt' must be a string", "in quotes"]),
    "locality-not-object": (_json([{**GOOD, "locality": ["The capital of Spain is"]}]),
                            ["record 0", "'locality[0]' must be an object with keys 'prompt' and 'answer'"]),
    "locality-answer-list": (_json([{**GOOD, "locality": [{"prompt": "Spain's capital is", "answer": ["Madrid"]}]}]),
                             ["'locality[0].answer' must be a string"]),
    "rephrase-string": (_json([GOOD, {**GOOD, "rephrase_prompts": "France's capital is"}]),
                        ["record 1", "'rephrase_prompts' must be a list of strings", "wrap it in a list"]),
    "rephrase-number-item": (_json([{**GOOD, "rephrase_prompts": ["ok", 3]}]), ["'rephrase_prompts[1]'"]),
    "prompt-number": (_json([GOOD, GOOD, {**GOOD, "prompt": 12}]), ["record 2", "field 'prompt' must be a string"]),
    "target-null": (_json([{**GOOD, "target_new": None}]), ["record 0", "field 'target_new' must be a string, got null"]),
    "target-true-number": (_json([{**GOOD, "target_true": 1998}]), ["field 'target_true' must be a string or None"]),
    "rome-paraphrase-string": (_json([{"requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                                             "target_new": {"str": "English"}, "target_true": {"str": "French"}},
                                       "paraphrase_prompts": "Danielle Darrieux speaks"}]),
                               ["format counterfact-rome", "'paraphrase_prompts' must be a list of strings"]),
    "knowedit-locality-prompt-number": (_json([{"prompt": "A is", "target_new": "b", "subject": "A",
                                                "locality": {"Relation_Specificity": [{"prompt": 3, "ground_truth": ["c"]}]}}]),
                                        ["format knowedit", "'locality['Relation_Specificity'][0].prompt'"]),
    "knowedit-target-number": (_json([{"prompt": "A is", "target_new": 5, "subject": "A"}]),
                               ["format knowedit", "field 'target_new' must be a string or a list of strings"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_refused_before_the_model_loads(name, tmp_path, capsys, no_model_load):
    content, messages = CASES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    assert main(["--data", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert str(path) in err, err
    for message in messages:
        assert message in err, (message, err)


def test_data_naming_a_folder_is_refused(tmp_path, capsys, no_model_load):
    (tmp_path / "edits.json").write_text(json.dumps([GOOD]))
    assert main(["--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "is a folder, not a file" in err and str(tmp_path / "edits.json") in err


def test_record_index_counts_from_the_start_of_the_file(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, GOOD, GOOD, {**GOOD, "prompt": 3}]))
    with pytest.raises(DataError, match="d.json: record 3 .*field 'prompt'"):
        load_requests(str(path), offset=2)


def test_good_files_still_load(tmp_path):
    """What stays accepted: a "data" wrapper, one record object, EasyEdit's single rephrase string, a UTF-8 BOM."""
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"data": [{**GOOD, "rephrase_prompts": ["France's capital is"]}]}))
    assert load_requests(str(path))[0].rephrase_prompts == ("France's capital is",)
    path.write_text(json.dumps(GOOD))
    assert load_requests(str(path))[0].target_new == "Lyon"
    path.write_bytes(b"\xef\xbb\xbf" + _json([{"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English",
                                                "ground_truth": "French", "subject": "Danielle Darrieux",
                                                "rephrase_prompt": "Danielle Darrieux speaks",
                                                "locality_prompt": "Michel Rocard is a native speaker of",
                                                "locality_ground_truth": "French"}]))
    assert load_requests(str(path))[0].rephrase_prompts == ("Danielle Darrieux speaks",)


def test_empty_field_is_still_skipped_not_refused(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "target_new": ""}]))
    assert len(load_requests(str(path))) == 1


# ---- the checks made once the model (its tokenizer and context) is loaded ------------------------------------------

@pytest.mark.parametrize("field, request_kwargs", [
    ("target_new", dict(target_new="Lyon<|im_end|>")),
    ("target_true", dict(target_true="<|endoftext|>Paris")),
    ("prompt", dict(prompt="<|im_start|>user The capital of France is")),
    ("rephrase_prompts[0]", dict(rephrase_prompts=["France's capital <|im_end|> is"])),
    ("locality[0].answer", dict(locality=[PromptAnswer("The capital of Spain is", "Madrid<|im_end|>")])),
])
def test_special_token_text_is_refused(field, request_kwargs, small_tokenizer):
    kwargs = dict(prompt="The capital of France is", target_new="Lyon", target_true="Paris", case_id="cf-7")
    requests = [EditRequest(prompt="A is", target_new="b"), EditRequest(**{**kwargs, **request_kwargs})]
    with pytest.raises(RequestError) as info:
        check_special_tokens(requests, small_tokenizer)
    message = str(info.value)
    assert "request 1" in message and "'cf-7'" in message and f"field '{field}'" in message
    assert "special (control) token" in message and ("<|im_end|>" in message or "<|endoftext|>" in message
                                                     or "<|im_start|>" in message)


def test_plain_text_passes_the_special_token_check(small_tokenizer):
    check_special_tokens([EditRequest(prompt="In HTML, <b> is", target_new="bold", target_true="| im_end |")], small_tokenizer)
    check_special_tokens([EditRequest(prompt="A is", target_new="b")], SimpleNamespace())  # a tokenizer with none


def _loaded(tokenizer, **config):
    return SimpleNamespace(name="tiny", tokenizer=tokenizer, model=SimpleNamespace(config=SimpleNamespace(**config)))


def test_context_length_is_checked(small_tokenizer):
    short = EditRequest(prompt="The capital of France is", target_new="Lyon", target_true="Paris")
    long_target = EditRequest(prompt="The capital of France is", target_new="Lyon " * 20, case_id=9)
    long_rephrase = EditRequest(prompt="A is", target_new="b", rephrase_prompts=["word " * 40])
    loaded = _loaded(small_tokenizer, max_position_embeddings=16)
    check_context_length([short], loaded)
    with pytest.raises(RequestError, match=r"request 1 \(case_id=9\): field 'prompt' followed by field 'target_new' is \d+ tokens, "
                                           r"longer than the 16 positions tiny reads"):
        check_context_length([short, long_target], loaded)
    with pytest.raises(RequestError, match="'rephrase_prompts\\[0\\]'.*16 positions"):
        check_context_length([long_rephrase], _loaded(small_tokenizer, n_positions=16))
    check_context_length([long_target], _loaded(small_tokenizer))  # no context length named: skipped
    check_context_length([long_target], _loaded(small_tokenizer, n_positions=16, is_encoder_decoder=True))

"""`lightning-edit ask`: flags checked before any model loads; answers before and after an edit (tiny and real models)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lightning_edit.models as models
from lightning_edit.ask import format_block, hits_target, main, parse_edit
from lightning_edit.editors import build_editor
from lightning_edit.errors import RequestError
from lightning_edit.requests import EditRequest

from conftest import build_tiny

DARRIEUX = "The mother tongue of Danielle Darrieux is|English|Danielle Darrieux"


@pytest.fixture
def no_model_load(monkeypatch):
    """Input errors must come before any model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    return captured.err


# ---- fast: checks without a model ------------------------------------------------------------------

@pytest.mark.parametrize("edit", ["no separator", "prompt|", "|target", "a|b|c|d", "p|t| "])
def test_malformed_edit_is_refused(capsys, no_model_load, edit):
    err = _error(capsys, ["smollm2-135m", "--method", "ft-m", "--edit", edit])
    assert err.startswith("error: --edit") and "PROMPT|TARGET[|SUBJECT]" in err


def test_subject_must_be_in_prompt_and_given_for_rome(capsys, no_model_load):
    err = _error(capsys, ["smollm2-135m", "--edit", "The mother tongue of Danielle Darrieux is|English|Darrieux D."])
    assert "SUBJECT 'Darrieux D.' does not occur in PROMPT" in err
    err = _error(capsys, ["smollm2-135m", "--method", "rome", "--edit", "The mother tongue of Danielle Darrieux is|English"])
    assert "method 'rome' needs the subject" in err and "--edit" in err


def test_unknown_method_and_flags_without_an_edit(capsys, no_model_load):
    err = _error(capsys, ["smollm2-135m", "--method", "nope", "--edit", DARRIEUX])
    assert "unknown method 'nope'" in err and "rome" in err
    for flags, named in ((["--method", "rome"], "--method"), (["--set", "lr=1"], "--set"), (["--batch"], "--batch")):
        err = _error(capsys, ["smollm2-135m", "a prompt", *flags])
        assert named in err and "--edit" in err
    assert "--n counts records of --data" in _error(capsys, ["smollm2-135m", "--n", "2", "a prompt"])
    assert "--max-new-tokens" in _error(capsys, ["smollm2-135m", "--max-new-tokens", "0", "a prompt"])
    assert "--threads" in _error(capsys, ["smollm2-135m", "--threads", "0", "a prompt"])


def test_learnt_method_needs_editor_checkpoint(capsys, no_model_load, tmp_path):
    assert "--editor DIR" in _error(capsys, ["smollm2-135m", "--method", "mend", "--edit", DARRIEUX])
    err = _error(capsys, ["smollm2-135m", "--method", "mend", "--editor", str(tmp_path / "none"), "--edit", DARRIEUX])
    assert "--editor" in err and "no such checkpoint folder" in err
    assert "methods that learn" in _error(capsys, ["smollm2-135m", "--method", "ft-m", "--editor", str(tmp_path), "--edit", DARRIEUX])


def test_nothing_to_ask(capsys, no_model_load):
    err = _error(capsys, ["smollm2-135m"])
    assert "PROMPT" in err and "--edit" in err and "--data" in err


def test_bad_model_or_directory(capsys, no_model_load, tmp_path):
    assert "not a registered model" in _error(capsys, ["smolm2", "a prompt"])
    assert "no such folder" in _error(capsys, [str(tmp_path / "missing"), "a prompt"])
    assert "without config.json" in _error(capsys, [str(tmp_path), "a prompt"])
    (tmp_path / "f.txt").write_text("x")
    assert "is a file" in _error(capsys, [str(tmp_path / "f.txt"), "a prompt"])
    (tmp_path / "edits.json").write_text("{}")
    assert "no config.json" in _error(capsys, [str(tmp_path)])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "f.txt").unlink()
    # edits.json names the base model to load: without a manifest covering it, it is not read at all
    assert "no manifest.json covering it" in _error(capsys, [str(tmp_path)])
    (tmp_path / "model.safetensors").write_bytes(b"")
    for content, message in (("{}", "list 'edits'"), ("not json", "cannot read it as JSON"),
                             (json.dumps({"base_model": "x", "edits": [{"requests": [{"prompt": "p"}]}]}), "edits[0].requests[0]"),
                             (json.dumps({"base_model": "x", "edits": []}), "holds no edit requests")):
        (tmp_path / "edits.json").write_text(content)
        seal(tmp_path)
        assert message in _error(capsys, [str(tmp_path)])


def seal(directory: Path) -> None:
    """A manifest over every file of ``directory``, as ``edit.py --save`` writes it (what ``ask DIR`` verifies)."""
    from lightning_edit.manifest import MANIFEST_FILE, write_manifest
    from lightning_edit.models.saving import SAVED_MODEL_FORMAT

    (directory / MANIFEST_FILE).unlink(missing_ok=True)
    files = [p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()]
    write_manifest(directory, files, SAVED_MODEL_FORMAT)


def test_requests_file_is_read_before_loading(capsys, no_model_load, tmp_path):
    assert "neither a known name" in _error(capsys, ["smollm2-135m", "--requests", str(tmp_path / "no.json")])


def test_usage_errors_and_help_return_codes(capsys):
    assert main(["smollm2-135m", "--set", "novalue", "p"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "lightning-edit ask" in capsys.readouterr().out


def test_parse_edit_and_marks():
    r = parse_edit(DARRIEUX)
    assert (r.prompt, r.target_new, r.subject) == ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux")
    assert parse_edit(" The sky is | green ").subject is None
    with pytest.raises(RequestError):
        parse_edit("just a prompt")
    assert hits_target(" English. She", "English") and not hits_target(" english", "English")
    assert not hits_target(" French, English", "English")
    block = format_block("P", " French,\nand", " English.", target="English")
    assert block.splitlines() == ["prompt:  P", "before:  French,\\nand", "after:   English.   [target: English ✓]"]
    assert format_block("P", None, " no", target="yes").endswith("[target: yes ✗]")


# ---- tiny random models: every mode end to end, in seconds ----------------------------------------

@pytest.fixture
def tiny_dir(tmp_path, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    directory = tmp_path / "tiny"
    loaded.model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def test_answer_mode_on_a_model_directory(capsys, tiny_dir):
    assert main([str(tiny_dir), "The Eiffel Tower is in", "Paris is", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("prompt:  ") == 2 and out.count("answer:  ") == 2 and "before:" not in out


def test_saved_dir_whose_base_cannot_load_shows_after_only(capsys, tiny_dir):
    req = EditRequest(prompt="The sky is", target_new="green", rephrase_prompts=("The colour of the sky is",))
    (tiny_dir / "edits.json").write_text(json.dumps(
        {"method": "ft-m", "base_model": "no-such-model", "hparams": {}, "edits": [{"seconds": 0.1, "requests": [req.to_dict()]}]}))
    seal(tiny_dir)
    assert main([str(tiny_dir), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "base model cannot be loaded here" in out and "'no-such-model' is not a registered model" in out
    assert "prompt:  The sky is\nafter:   " in out and "prompt:  The colour of the sky is\nafter:   " in out
    assert "before:" not in out and out.count("[target: green ") == 2


def test_edit_mode_on_a_tiny_model_undoes_the_edit(capsys, tokenizer, monkeypatch):
    tiny = build_tiny("llama", tokenizer)
    weights = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny)
    code = main(["smollm2-135m", "--method", "ft-m", "--set", "layers=[-1]", "--set", "num_steps=2", "--max-new-tokens", "2",
                 "--edit", "The sky is|green", "--edit", "Grass is|blue", "Other prompt"])
    assert code == 0
    out = capsys.readouterr().out
    assert "edit: ft-m, 2 requests" in out and out.count("before:  ") == 1 and out.count("after:   ") == 1
    assert "[target:" not in out  # "Other prompt" is no edit prompt
    for k, v in tiny.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


# ---- the real smollm2-135m ---------------------------------------------------------------------------

FAST_FT_M = ["--set", "lr=5e-3", "--set", "num_steps=8"]  # the Darrieux edit holds after ~4 steps: ~10 s on 2 cores


@pytest.mark.parametrize("method", [pytest.param("ft-m", id="ft-m"),
                                    pytest.param("rome", id="rome", marks=pytest.mark.slow)])  # ROME: ~150 s on 2 busy cores
def test_edit_on_smollm2_before_and_after(capsys, smollm2, monkeypatch, method):
    weights = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    monkeypatch.setattr(models, "load_model", lambda *a, **k: smollm2)
    flags = FAST_FT_M if method == "ft-m" else []
    assert main(["smollm2-135m", "--method", method, "--edit", DARRIEUX, "--max-new-tokens", "4", *flags]) == 0
    out = capsys.readouterr().out
    assert "prompt:  The mother tongue of Danielle Darrieux is\nbefore:  French" in out
    assert "after:   English" in out and "[target: English ✓]" in out
    for k, v in smollm2.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_saved_ft_m_edit_dir_before_and_after(capsys, smollm2, tmp_path, monkeypatch):
    request = parse_edit(DARRIEUX)
    editor = build_editor("ft-m", smollm2, {"lr": 5e-3, "num_steps": 8})
    deltas = editor.edit_sequential(smollm2, [request])
    try:
        smollm2.model.save_pretrained(tmp_path, safe_serialization=True)
        smollm2.tokenizer.save_pretrained(tmp_path)
    finally:
        for d in reversed(deltas):
            d.undo(smollm2)
    (tmp_path / "edits.json").write_text(json.dumps({
        "method": editor.name, "base_model": smollm2.name, "hparams": editor.hparams.to_dict(),
        "edits": [{"seconds": d.seconds, "requests": [r.to_dict() for r in d.requests]} for d in deltas]}, default=str))
    seal(tmp_path)
    real_load = models.load_model
    monkeypatch.setattr(models, "load_model", lambda name, **k: smollm2 if name == "smollm2-135m" else real_load(name, **k))
    assert main([str(tmp_path), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "method ft-m, 1 request, base model smollm2-135m" in out
    assert "before:  French" in out and "after:   English" in out and "[target: English ✓]" in out

"""Saving an edited model, patches included, and loading it back (issue 13.1, 13.2), on a tiny random LLaMA saved
as a local directory:

- for every registered method: edit → ``save_edited_model`` → ``load_model(DIR)`` in a fresh object gives the same
  logits (and scores) on the edit prompt, its rephrase and a locality prompt as the edited model did;
- a saved directory whose files changed after saving (a flipped byte, a rewritten JSON, NaN or wrong-shaped tensors
  with the manifest rewritten to match) is refused, and nothing is attached to the model;
- the patches go on all or nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import save_tiny
from lightning_edit.errors import CheckpointError
from lightning_edit.manifest import MANIFEST_FILE, write_manifest
from lightning_edit.models import load_model
from lightning_edit.models.saving import (PATCH_DIR, PATCHES_FORMAT, PATCHES_JSON, PATCHES_TENSORS, load_patches,
                                          save_edited_model)
from lightning_edit.models.teacher_forcing import build_target_batch, score_targets, target_logits
from test_contract_all_methods import METHODS, REQUESTS, make_editor

PROMPTS = [REQUESTS[0].prompt, *REQUESTS[0].rephrase_prompts, REQUESTS[0].locality[0].prompt]
TARGETS = [REQUESTS[0].target_new, REQUESTS[0].target_new, REQUESTS[0].locality[0].answer]


def logits_of(loaded) -> torch.Tensor:
    with torch.no_grad():
        return target_logits(loaded, build_target_batch(loaded, PROMPTS, TARGETS))


def hooks_on(loaded) -> list[str]:
    return [name for name, m in loaded.model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.fixture(scope="module")
def base_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    return save_tiny("llama", tiny_tokenizer, tmp_path_factory.mktemp("tiny") / "base")


def edit_and_save(method: str, base_dir: Path, tmp_path: Path, requests=REQUESTS):
    loaded = load_model(str(base_dir))
    editor = make_editor(method, loaded, tmp_path)
    deltas = [editor.edit(loaded, [r]) for r in requests]
    save_edited_model(loaded, tmp_path / "saved", method=method, requests=requests, record={"method": method})
    return loaded, deltas


@pytest.mark.parametrize("method", METHODS)
def test_reloaded_model_scores_exactly_as_the_edited_one(method, base_dir, tmp_path):
    base_logits = logits_of(load_model(str(base_dir)))
    loaded, deltas = edit_and_save(method, base_dir, tmp_path)
    edited_logits, edited_scores = logits_of(loaded), score_targets(loaded, PROMPTS, TARGETS)
    keys = loaded.patches.keys()
    for delta in reversed(deltas):
        delta.undo(loaded)

    reloaded = load_model(str(tmp_path / "saved"))
    assert reloaded.patches.keys() == keys
    assert not torch.equal(edited_logits, base_logits), f"{method} changed nothing: the round trip would prove nothing"
    assert torch.equal(logits_of(reloaded), edited_logits)
    for before, after in zip(edited_scores, score_targets(reloaded, PROMPTS, TARGETS)):
        assert torch.equal(before.token_logprobs, after.token_logprobs)
    manifest = json.loads((tmp_path / "saved" / MANIFEST_FILE).read_text())
    assert manifest["method"] == method and manifest["requests"][0]["target_new"] == "English"
    assert manifest["patches"] == [reloaded.patches.get(k).kind for k in keys] and "model.safetensors" in manifest["files"]
    # a plain transformers load gets the weights only; the record says what it misses
    record = json.loads((tmp_path / "saved" / "edits.json").read_text())
    assert record["patches"] == manifest["patches"]
    reloaded.patches.reset()
    assert not hooks_on(reloaded)


def test_several_sequential_patch_edits_round_trip(base_dir, tmp_path):
    """Two GRACE edits in one codebook, two CaliNET patches side by side, two IKE contexts chosen between by the
    sentence encoder (loaded back by name): all come back."""
    second = REQUESTS[0].__class__(prompt="The capital of Italy is", target_new="Paris")
    for method in ("grace", "calinet", "ike"):
        loaded, _ = edit_and_save(method, base_dir, tmp_path / method, requests=[REQUESTS[0], second])
        reloaded = load_model(str(tmp_path / method / "saved"))
        assert reloaded.patches.keys() == loaded.patches.keys() and torch.equal(logits_of(reloaded), logits_of(loaded))


@pytest.fixture(scope="module")
def grace_saved(base_dir, tmp_path_factory) -> Path:
    """One GRACE edit saved once for the tampering tests (each works on its own copy)."""
    tmp = tmp_path_factory.mktemp("grace")
    edit_and_save("grace", base_dir, tmp)
    return tmp / "saved"


@pytest.fixture
def saved(grace_saved, tmp_path) -> Path:
    return Path(shutil.copytree(grace_saved, tmp_path / "saved"))


def rewrite(folder: Path, change) -> None:
    """Change the saved patches, then rewrite the manifest to match (someone who can write the files can)."""
    entries = json.loads((folder / PATCHES_JSON).read_text())
    tensors = load_file(str(folder / PATCHES_TENSORS))
    change(entries, tensors)
    for i, entry in enumerate(entries):
        entry["tensors"] = {name: {"shape": list(tensors[f"{i}/{name}"].shape), "dtype": str(tensors[f"{i}/{name}"].dtype)[6:]}
                            for name in entry["tensors"]}
    save_file(tensors, str(folder / PATCHES_TENSORS))
    (folder / PATCHES_JSON).write_text(json.dumps(entries))
    old = json.loads((folder / MANIFEST_FILE).read_text())
    write_manifest(folder, [PATCHES_JSON, PATCHES_TENSORS], PATCHES_FORMAT,
                   **{k: v for k, v in old.items() if k not in ("format", "files")})


def nan_value(entries, tensors):
    tensors["0/values"] = tensors["0/values"].clone()
    tensors["0/values"][0, 0] = float("nan")


def wrong_width(entries, tensors):
    tensors["0/keys"] = torch.zeros(tensors["0/keys"].shape[0], 1)  # broadcastable against (N, d)


def extra_radius(entries, tensors):
    tensors["0/radii"] = torch.cat([tensors["0/radii"], tensors["0/radii"]])


@pytest.mark.parametrize("change, message", [(nan_value, "NaN"), (wrong_width, "this model needs torch.float32"),
                                             (extra_radius, "differ in number")])
def test_tampered_tensors_are_refused_and_nothing_is_attached(change, message, base_dir, saved):
    folder = saved / PATCH_DIR
    rewrite(folder, change)
    fresh = load_model(str(base_dir))
    with pytest.raises(CheckpointError, match=message):
        load_patches(fresh, folder)
    assert len(fresh.patches) == 0 and not hooks_on(fresh)


@pytest.mark.parametrize("target", [f"{PATCH_DIR}/{PATCHES_TENSORS}", f"{PATCH_DIR}/{PATCHES_JSON}", "edits.json",
                                    "model.safetensors"])
def test_files_changed_after_saving_are_refused_by_hash(target, saved):
    path = saved / target
    data = bytearray(path.read_bytes())
    data[-2] ^= 1  # one flipped bit (a JSON stays readable: the last bytes are whitespace or a bracket)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(str(saved))


def test_rewritten_patch_config_is_refused(saved):
    path = saved / PATCH_DIR / PATCHES_JSON
    entries = json.loads(path.read_text())
    entries[0]["config"]["values"]["labels"] = ["german"]
    path.write_text(json.dumps(entries))
    with pytest.raises(CheckpointError, match="changed after saving"):
        load_model(str(saved))


def test_patches_go_on_all_or_nothing(base_dir, tmp_path):
    """GRACE then T-Patcher saved together; a model that already carries a T-Patcher memory takes neither."""
    loaded = load_model(str(base_dir))
    for method in ("grace", "t-patcher"):
        make_editor(method, loaded, tmp_path).edit(loaded, REQUESTS)
    save_edited_model(loaded, tmp_path / "saved", method="grace+t-patcher", requests=REQUESTS, record={})
    target = load_model(str(base_dir))
    make_editor("t-patcher", target, tmp_path).edit(target, REQUESTS)
    with pytest.raises(CheckpointError, match="already carries a 't-patcher' patch"):
        load_patches(target, tmp_path / "saved")
    assert target.patches.keys() == ["t-patcher"]  # the GRACE codebook attached first was taken off again
    assert [n for n in hooks_on(target)] == [target.patches.get("t-patcher").module_name]


def test_patches_on_other_weights_are_refused(base_dir, tiny_tokenizer, saved, tmp_path):
    other = load_model(str(save_tiny("llama", tiny_tokenizer, tmp_path / "other")))  # same seed: same weights
    load_patches(other, saved)  # the same weights take the patches
    different = load_model(str(base_dir), dtype="bfloat16")
    with pytest.raises(CheckpointError, match="in dtype float32"):
        load_patches(different, saved)
    assert len(different.patches) == 0


@pytest.mark.slow
def test_grace_on_smollm2_saved_by_the_cli_answers_the_edited_fact(tmp_path, capsys):
    """Issue 13's closing check: `edit.py --method grace --save DIR`, then `load_model(DIR)` answers the edited fact."""
    from lightning_edit.cli import main

    directory = tmp_path / "grace"
    assert main(["--method", "grace", "--n", "1", "--save", str(directory), "--quiet", "--no-fluency", "--threads", "1"]) == 0
    assert "reliability" in capsys.readouterr().out
    record = json.loads((directory / "edits.json").read_text())
    request = record["edits"][0]["requests"][0]
    assert record["patches"] == ["grace"] and "unchanged" in record["weights"]
    reloaded = load_model(str(directory))
    assert reloaded.patches.keys() == ["grace"]
    edited = score_targets(reloaded, [request["prompt"]], [request["target_new"]])[0]
    assert edited.exact_match == 1.0, "the reloaded model does not answer the edited fact"
    reloaded.patches.reset()  # the same weights without the codebook: the base model's answer comes back
    assert score_targets(reloaded, [request["prompt"]], [request["target_new"]])[0].exact_match == 0.0

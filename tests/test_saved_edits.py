"""A saved ``EditDelta`` (issue 13.2): a manifest beside it, and every tensor checked before the first weight is
written. Altered, NaN or broadcastable wrong-shaped tensors and a rewritten ``edit.json`` are refused with the model
untouched; a wrong second tensor never leaves the first one written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build_tiny
from lightning_edit import EditRequest
from lightning_edit.editors import EditDelta, build_editor
from lightning_edit.errors import CheckpointError
from lightning_edit.manifest import MANIFEST_FILE, write_manifest

REQ = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English")


def state(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.fixture(scope="module")
def saved(tiny_tokenizer, tmp_path_factory):
    """An FT-M edit of two tensors on a tiny LLaMA, saved; the model is handed back unedited."""
    loaded = build_tiny("llama", tiny_tokenizer)
    delta = build_editor("ft-m", loaded, {"layers": [1, 2], "num_steps": 3, "lr": 1e-2}).edit(loaded, [REQ])
    edited = state(loaded)
    directory = delta.save(tmp_path_factory.mktemp("edit") / "edit", loaded)
    delta.undo(loaded)
    return loaded, directory, edited, sorted(delta.weights_after)


def copy(directory: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(directory, tmp_path / "edit"))


def test_round_trip_and_manifest(saved, tmp_path):
    loaded, directory, edited, names = saved
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"edit.safetensors", "edit.json"} and manifest["method"] == "ft-m"
    assert manifest["requests"][0]["target_new"] == "English" and manifest["base_fingerprint"] == loaded.weights_fingerprint()
    before = state(loaded)
    delta = EditDelta.load(directory)
    delta.reapply(loaded)
    assert_same(edited, state(loaded))
    delta.undo(loaded)
    assert_same(before, state(loaded))


def retensor(directory: Path, change) -> None:
    """Change the saved tensors and rewrite the manifest to match (what someone who can write the files can do)."""
    tensors = load_file(str(directory / "edit.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "edit.safetensors"))
    old = json.loads((directory / MANIFEST_FILE).read_text())
    write_manifest(directory, ["edit.safetensors", "edit.json"], old["format"],
                   **{k: v for k, v in old.items() if k not in ("format", "files")})


def test_altered_tensor_or_rewritten_record_is_refused_by_hash(saved, tmp_path):
    _, directory, _, names = saved
    altered = copy(directory, tmp_path)
    tensors = load_file(str(altered / "edit.safetensors"))
    tensors[f"after/{names[0]}"] = tensors[f"after/{names[0]}"] * 1.01
    save_file(tensors, str(altered / "edit.safetensors"))
    with pytest.raises(CheckpointError, match="edit.safetensors has SHA-256"):
        EditDelta.load(altered)
    record = json.loads((directory / "edit.json").read_text())
    record["requests"][0]["target_new"] = "German"
    rewritten = copy(directory, tmp_path / "b")
    (rewritten / "edit.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="edit.json has SHA-256"):
        EditDelta.load(rewritten)
    (rewritten / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        EditDelta.load(rewritten)


def test_nan_and_wrong_shapes_are_refused_even_with_a_matching_manifest(saved, tmp_path):
    _, directory, _, names = saved
    name = names[1]

    def nan(tensors):
        tensors[f"after/{name}"] = tensors[f"after/{name}"].clone()
        tensors[f"after/{name}"][0, 0] = float("nan")

    def broadcastable(tensors):  # (out, in) → (1, in): copy_ would broadcast it over every row
        tensors[f"after/{name}"] = tensors[f"after/{name}"][:1].clone()

    for i, (change, message) in enumerate([(nan, "NaN"), (broadcastable, "after the edit")]):
        target = copy(directory, tmp_path / str(i))
        retensor(target, change)
        with pytest.raises(CheckpointError, match=message):
            EditDelta.load(target)


def test_a_wrong_second_tensor_leaves_the_first_unwritten(saved):
    """Checked in memory too (a delta built by code, not read from disk): nothing is half-applied."""
    loaded, directory, _, names = saved
    before = state(loaded)
    for wrong in (lambda t: t[:1].clone(), lambda t: t.to(torch.float64), lambda t: t.clone().fill_(float("inf"))):
        delta = EditDelta.load(directory)
        delta.weights_after[names[1]] = wrong(delta.weights_after[names[1]])
        with pytest.raises(CheckpointError, match="nothing was applied"):
            delta.reapply(loaded)
        assert_same(before, state(loaded))


def test_other_weights_are_refused(saved, tiny_tokenizer):
    _, directory, _, _ = saved
    other = build_tiny("llama", tiny_tokenizer, seed=1)
    before = state(other)
    with pytest.raises(CheckpointError, match="does not hold the weights"):
        EditDelta.load(directory).reapply(other)
    assert_same(before, state(other))

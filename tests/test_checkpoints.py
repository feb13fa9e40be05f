"""Shareable editor checkpoints: round trip, tampered files and other base models refused, no pickle."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import build_tiny
from lightning_edit.checkpoints import (CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, load_editor_checkpoint, read_manifest,
                                        save_editor_checkpoint)
from lightning_edit.editors import build_editor
from lightning_edit.editors.learned.mend import MENDEditor, MENDHyperParams
from lightning_edit.errors import CheckpointError
from lightning_edit.requests import EditRequest

REQUEST = EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City", case_id=0)


@pytest.fixture
def saved(tmp_path, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    hp = MENDHyperParams.for_model("mend", loaded.name, loaded.layout.family, {"rank": 8, "edit_lr_init": 0.5})
    network = MENDEditor(hp).build_network(loaded)
    with torch.no_grad():
        network.edit_lrs.fill_(0.5)
    directory = save_editor_checkpoint(tmp_path / "mend-tiny", method="mend", state_dict=network.state_dict(),
                                       config=hp.architecture(), loaded=loaded,
                                       training={"dataset": "zsre-train", "steps": 3}, metrics={"val/edit_success": 0.5})
    return loaded, network, directory


def test_round_trip_and_manifest(saved):
    loaded, network, directory = saved
    assert {p.name for p in directory.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE, "README.md"}
    manifest = read_manifest(directory)
    assert manifest["method"] == "mend"
    assert manifest["base_model"]["weights_fingerprint"] == loaded.weights_fingerprint()
    assert manifest["training"] == {"dataset": "zsre-train", "steps": 3}
    assert manifest["validation_metrics"] == {"val/edit_success": 0.5}
    assert {"torch", "transformers", "lightning", "safetensors"} <= set(manifest["versions"])
    assert set(manifest["files"]) == {WEIGHTS_FILE, CONFIG_FILE}
    ckpt = load_editor_checkpoint(directory, method="mend", loaded=loaded)
    for k, v in network.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v)
    assert ckpt.config["rank"] == 8


def test_editor_loads_checkpoint_through_the_cli_override(saved):
    loaded, network, directory = saved
    editor = build_editor("mend", loaded, {"editor_checkpoint": str(directory), "rank": 999})
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    delta = editor.edit(loaded, [REQUEST])
    assert editor.hparams.rank == 8  # the architecture comes from the checkpoint, not the YAML/override
    assert editor.checkpoint is not None and editor.checkpoint.manifest["method"] == "mend"
    assert any(d.abs().sum() > 0 for d in delta.weight_deltas.values())
    delta.undo(loaded)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())


def test_tampered_weights_refused(saved):
    loaded, _, directory = saved
    data = bytearray((directory / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (directory / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_editor_checkpoint(directory, method="mend", loaded=loaded)


def test_tampered_config_refused(saved):
    loaded, _, directory = saved
    (directory / CONFIG_FILE).write_text((directory / CONFIG_FILE).read_text().replace("rank: 8", "rank: 9"))
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_editor_checkpoint(directory, method="mend", loaded=loaded)


def test_other_base_model_refused(saved, tokenizer):
    _, _, directory = saved
    other = build_tiny("llama", tokenizer, seed=1)
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_editor_checkpoint(directory, method="mend", loaded=other)
    editor = build_editor("mend", other, {"editor_checkpoint": str(directory)})
    with pytest.raises(CheckpointError, match="trained on base model"):
        editor.edit(other, [REQUEST])


def test_wrong_method_missing_manifest_and_paths_outside_refused(saved, tmp_path):
    loaded, _, directory = saved
    with pytest.raises(CheckpointError, match="'mend' editor, not 'serac'"):
        load_editor_checkpoint(directory, method="serac", loaded=loaded)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["files"]["../escape"] = "0" * 64
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside"):
        load_editor_checkpoint(directory, method="mend", loaded=loaded)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_editor_checkpoint(directory, method="mend", loaded=loaded)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_editor_checkpoint(tmp_path / "nothing-here", method="mend")


def test_no_pickle_in_a_checkpoint(saved):
    _, _, directory = saved
    # safetensors files start with an 8-byte header length then JSON: never a pickle opcode stream
    head = (directory / WEIGHTS_FILE).read_bytes()[:9]
    assert head[8:9] == b"{"

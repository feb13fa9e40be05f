"""Trained editors with the Hugging Face conventions: save_pretrained / from_pretrained / push_to_hub, the model
card, hub ids (offline: one clear error) and the same manifest/fingerprint checks for hub downloads."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from conftest import build_tiny
from lightning_edit.checkpoints import (CARD_FILE, CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, EditorCheckpoint, is_hub_id,
                                        save_editor_checkpoint)
from lightning_edit.editors import build_editor
from lightning_edit.editors.learned.mend import MENDEditor
from lightning_edit.errors import CheckpointError, ModelNotAvailableError
from lightning_edit.requests import EditRequest, PromptAnswer
from lightning_edit.editors.learned.mend.module import MENDModule

REQUEST = EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City",
                      rephrase_prompts=("Freedonia's capital is",), locality=(PromptAnswer("The sky is", "blue"),), case_id=0)
METRICS = {"val/edit_success": 0.75, "val/locality": 0.5, "val/score": 0.625}


@pytest.fixture
def trained(tmp_path, tokenizer):
    """A tiny MEND editor after two optimizer steps, exported as train.py does."""
    loaded = build_tiny("llama", tokenizer)
    module = MENDModule(loaded.name, {"rank": 8, "edit_lr_init": 1e-2}, {"lr": 1e-2}, loaded=loaded)
    opt = torch.optim.Adam(module.param_groups(), lr=1e-2)
    for _ in range(2):
        loss, _ = module.training_loss([REQUEST])
        opt.zero_grad()
        loss.backward()
        opt.step()
    directory = save_editor_checkpoint(
        tmp_path / "mend-tiny", method="mend", state_dict=module.network.state_dict(),
        config={**module.editor.hparams.architecture(), "method": "mend"}, loaded=loaded,
        training={"dataset": "zsre-train", "val_dataset": None, "n_train": 1, "n_val": 1, "steps": 2}, metrics=METRICS)
    return loaded, module.network, directory


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_save_pretrained_from_pretrained_round_trip(trained, tmp_path):
    loaded, network, directory = trained
    ckpt = EditorCheckpoint.from_pretrained(directory, loaded=loaded)  # method read from the manifest
    out = ckpt.save_pretrained(tmp_path / "copy")
    assert {p.name for p in out.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE, CARD_FILE}
    for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE):  # byte for byte: the manifest's hashes stay valid
        assert (out / name).read_bytes() == (directory / name).read_bytes()
    again = EditorCheckpoint.from_pretrained(str(out), method="mend", loaded=loaded)
    assert all(torch.equal(again.state_dict[k], v) for k, v in network.state_dict().items())
    editor = MENDEditor.from_pretrained(out, loaded)
    assert editor.network is not None and editor.hparams.rank == 8
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    delta = editor.edit(loaded, [REQUEST])
    delta.undo(loaded)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    assert (editor.save_pretrained(tmp_path / "third") / MANIFEST_FILE).read_bytes() == (directory / MANIFEST_FILE).read_bytes()


def test_model_card(trained):
    loaded, _, directory = trained
    card = (directory / CARD_FILE).read_text()
    meta = front_matter(card)
    assert meta == {"library_name": "lightning-edit", "tags": ["knowledge-editing", "mend"], "base_model": "tiny-llama"}
    for text in ("MEND editor for tiny-llama", loaded.weights_fingerprint(), "`zsre-train`, 1 records", "| Training steps | 2 |",
                 "| `val/edit_success` | 0.7500 |", "| `val/locality` | 0.5000 |", "--method mend"):
        assert text in card
    from lightning_edit.checkpoints import model_card

    registered = model_card({"method": "ke", "base_model": {"name": "smollm2-135m"}})
    assert front_matter(registered)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "(none recorded)" in registered


def test_hub_id_offline_is_a_one_line_error(trained, tmp_path, monkeypatch, capsys):
    loaded, _, directory = trained
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert is_hub_id("someone/mend-tiny") and not is_hub_id(str(directory)) and not is_hub_id("a/b/c")
    with pytest.raises(ModelNotAvailableError, match=r"could not be fetched .*offline.*--editor DIR"):
        EditorCheckpoint.from_pretrained("someone/mend-tiny", cache_dir=tmp_path / "hub")
    editor = build_editor("mend", loaded, {"editor_checkpoint": "someone/mend-tiny"})
    with pytest.raises(ModelNotAvailableError, match="hf download someone/mend-tiny"):
        editor.edit(loaded, [REQUEST])
    from lightning_edit.cli import main

    assert main(["--method", "mend", "--editor", "someone/mend-tiny", "--n", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "could not be fetched" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def fake_download(monkeypatch, folder: Path) -> list:
    calls: list = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hub_download_is_verified_as_strictly(trained, tmp_path, monkeypatch, tokenizer):
    loaded, _, directory = trained
    cached = Path(shutil.copytree(directory, tmp_path / "snapshot"))
    calls = fake_download(monkeypatch, cached)
    assert EditorCheckpoint.from_pretrained("someone/mend-tiny", loaded=loaded).manifest["method"] == "mend"
    assert calls[0][0] == "someone/mend-tiny" and set(calls[0][1]["allow_patterns"]) >= {WEIGHTS_FILE, MANIFEST_FILE}
    with pytest.raises(CheckpointError, match="fingerprint"):
        EditorCheckpoint.from_pretrained("someone/mend-tiny", loaded=build_tiny("llama", tokenizer, seed=1))
    with pytest.raises(CheckpointError, match="'mend' editor, not 'serac'"):
        EditorCheckpoint.from_pretrained("someone/mend-tiny", method="serac", loaded=loaded)
    data = bytearray((cached / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (cached / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        EditorCheckpoint.from_pretrained("someone/mend-tiny", loaded=loaded)
    with pytest.raises(CheckpointError, match="sha256"):
        build_editor("mend", loaded, {"editor_checkpoint": "someone/mend-tiny"}).edit(loaded, [REQUEST])


def test_push_to_hub_uploads_the_folder_with_its_card(trained, monkeypatch):
    loaded, _, directory = trained
    from huggingface_hub import HfApi

    seen: dict = {}

    def create_repo(self, repo_id, **kwargs):
        seen["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        seen["upload"] = (repo_id, kwargs, {p.name: p.read_bytes() for p in folder.iterdir()})
        EditorCheckpoint.from_pretrained(folder, loaded=loaded)  # what is uploaded loads and verifies
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    editor = MENDEditor.from_pretrained(directory, loaded)
    assert editor.push_to_hub("someone/mend-tiny", token="hf_x", private=True) == "commit-info"
    assert seen["create"] == ("someone/mend-tiny", {"token": "hf_x", "private": True, "exist_ok": True})
    repo_id, kwargs, files = seen["upload"]
    assert repo_id == "someone/mend-tiny" and kwargs["token"] == "hf_x"
    assert set(files) == {WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE, CARD_FILE}
    assert files[WEIGHTS_FILE] == (directory / WEIGHTS_FILE).read_bytes()
    card = files[CARD_FILE].decode()
    assert front_matter(card)["tags"] == ["knowledge-editing", "mend"]
    assert "--editor someone/mend-tiny" in card

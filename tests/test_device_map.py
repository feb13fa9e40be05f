"""``--device-map``: a model spread by accelerate over devices, CPU memory and disk takes the same edits as the model
held whole, reads and writes its weights where they live, and undoes them bit for bit.

Fast tests: a tiny random LLaMA with three of its four blocks on disk, every flag's checks. Slow tests: smollm2-135m
with half its blocks on disk (the blocks ROME, MEMIT, AlphaEdit, FT-M, GRACE and WISE edit among them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit import EditRequest, PromptAnswer
from lightning_edit.editors import build_editor
from lightning_edit.errors import ConfigError
from lightning_edit.models.device_map import Placement, dispatch, parse_max_memory
from lightning_edit.models.placement import is_offloaded, materialised, offload_files, read_tensor, write_tensor

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                      subject="Danielle Darrieux", rephrase_prompts=("Danielle Darrieux grew up speaking",),
                      locality=(PromptAnswer("The capital of Italy is", "Rome"),))
SIX = ("rome", "memit", "alphaedit", "ft-m", "grace", "wise")
TINY_DISK = (1, 2, 3)


def tiny_overrides(method: str, stats_dir: Path) -> dict:
    """Small settings on the tiny model, every method's layers among the blocks on disk."""
    stats = dict(mom2_n_tokens=256, stats_dir=str(stats_dir), progress=False, context_prefixes=1, context_length=3,
                 v_num_grad_steps=3, stats_seq_len=64)
    return {"rome": {**stats, "layers": [1]}, "memit": {**stats, "layers": [1, 2]},
            "alphaedit": {**stats, "layers": [1, 2]}, "ft-m": {"layers": [1], "num_steps": 3, "lr": 1e-2},
            "grace": {"num_steps": 3, "layer": -2}, "wise": {"memory_pool": [], "layer": -2, "num_steps": 3}}[method]


def block_map(n_blocks: int, on_disk: set[int]) -> dict:
    top = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return {**top, **{f"model.layers.{i}": ("disk" if i in on_disk else "cpu") for i in range(n_blocks)}}


def spread(loaded, tmp_path: Path, on_disk: set[int]):
    """``loaded`` dispatched with the blocks ``on_disk`` offloaded to a folder in ``tmp_path`` (a JSON map file, as
    ``--device-map FILE`` reads it)."""
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(block_map(loaded.layout.num_layers(loaded.model), on_disk)))
    placement = Placement.from_flags(str(map_file), offload_folder=str(tmp_path / "offload"))
    loaded.model = dispatch(loaded.model, placement)
    return loaded, tmp_path / "offload"


def logits(loaded, prompt: str = REQUEST.prompt) -> torch.Tensor:
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(ids).logits


@pytest.mark.parametrize("method", SIX)
def test_offloaded_tiny_model_takes_and_undoes_the_same_edit(method, tokenizer, tmp_path):
    whole = build_tiny("llama", tokenizer)
    off, folder = spread(build_tiny("llama", tokenizer), tmp_path, set(TINY_DISK))
    assert is_offloaded(off.model, "model.layers.1.mlp.down_proj.weight")
    files_before, scores_before = offload_files(folder), logits(off)
    delta_whole = build_editor(method, whole, tiny_overrides(method, tmp_path / "stats")).edit(whole, [REQUEST])
    delta_off = build_editor(method, off, tiny_overrides(method, tmp_path / "stats")).edit(off, [REQUEST])

    for name, after in delta_whole.weights_after.items():  # the edited tensors, read back from the offload files
        assert is_offloaded(off.model, name)
        assert torch.equal(read_tensor(off.model, name), after), name
        assert torch.equal(delta_off.weights_after[name], after) and torch.equal(delta_off.weights_before[name],
                                                                                   delta_whole.weights_before[name])
    assert offload_files(folder) != files_before or not delta_whole.weights_after  # weight methods wrote the files
    assert torch.equal(logits(off), logits(whole)), "the next forward sees the edit, as on the model held whole"
    assert not torch.equal(logits(off), scores_before)
    delta_whole.undo(whole)
    delta_off.undo(off)
    assert offload_files(folder) == files_before, "undo restores every offload file byte for byte"
    assert torch.equal(logits(off), scores_before)
    assert all(p.device.type == "meta" for n, p in off.model.named_parameters() if n.startswith("model.layers.1."))


def test_statistics_of_an_offloaded_layer_equal_the_whole_models(tokenizer, tmp_path):
    from lightning_edit.stats.second_moment import layer_second_moments

    whole = build_tiny("llama", tokenizer)
    off, _ = spread(build_tiny("llama", tokenizer), tmp_path, set(TINY_DISK))
    common = dict(n_tokens=256, seq_len=64, batch_size=4, progress=False)
    a = layer_second_moments(whole, [0, 2], cache_dir=tmp_path / "a", **common)
    b = layer_second_moments(off, [0, 2], cache_dir=tmp_path / "b", **common)  # block 0 on the CPU, block 2 on disk
    assert off.weights_fingerprint() == whole.weights_fingerprint()
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])


def test_save_writes_the_whole_edited_model(tokenizer, tmp_path):
    from lightning_edit.models import load_model
    from lightning_edit.models.saving import save_edited_model

    whole = build_tiny("llama", tokenizer)
    off, _ = spread(build_tiny("llama", tokenizer), tmp_path, set(TINY_DISK))
    for loaded in (whole, off):
        build_editor("ft-m", loaded, tiny_overrides("ft-m", tmp_path)).edit(loaded, [REQUEST])
    save_edited_model(off, tmp_path / "saved", method="ft-m", requests=[REQUEST], record={})
    back = load_model(str(tmp_path / "saved"))
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], tensor), name


def test_write_and_materialise_reach_the_offload_file(tokenizer, tmp_path):
    off, folder = spread(build_tiny("llama", tokenizer), tmp_path, set(TINY_DISK))
    name = "model.layers.2.mlp.up_proj.weight"
    before = read_tensor(off.model, name).clone()
    write_tensor(off.model, name, before + 1)
    assert torch.equal(read_tensor(off.model, name), before + 1)  # read back from the .dat file
    with pytest.raises(RuntimeError, match="inside"):
        with materialised(off.model, [name]):
            param = off.model.get_submodule("model.layers.2.mlp.up_proj").weight
            assert param.device.type == "cpu" and not is_offloaded(off.model, name)
            param.data.copy_(before)
            raise RuntimeError("inside")
    assert is_offloaded(off.model, name), "offloaded again after an error"
    assert torch.equal(read_tensor(off.model, name), before), "and what it held was written back"


def test_cpu_offload_is_written_in_place(tokenizer, tmp_path):
    from accelerate import cpu_offload

    whole = build_tiny("llama", tokenizer)
    off = build_tiny("llama", tokenizer)
    cpu_offload(off.model, execution_device=torch.device("cpu"))  # every weight in a CPU dict, loaded per forward
    assert is_offloaded(off.model, "model.layers.1.mlp.down_proj.weight")
    for method in ("ft-m", "rome"):
        delta_whole = build_editor(method, whole, tiny_overrides(method, tmp_path / "a")).edit(whole, [REQUEST])
        delta_off = build_editor(method, off, tiny_overrides(method, tmp_path / "b")).edit(off, [REQUEST])
        for name, after in delta_whole.weights_after.items():
            assert torch.equal(read_tensor(off.model, name), after)
        assert torch.equal(logits(off), logits(whole))
        delta_off.undo(off)
        delta_whole.undo(whole)
        for name, before in delta_whole.weights_before.items():
            assert torch.equal(read_tensor(off.model, name), before)


# ---- the flags, checked before any model loads ------------------------------------------------------------------
def test_max_memory_parses_and_refuses_what_is_not_a_size():
    assert parse_max_memory("cpu=200MB, 0=20GB,cuda:1=1GiB") == {"cpu": "200MB", 0: "20GB", 1: "1GiB"}
    for bad, named in (("cpu", "DEVICE=SIZE"), ("cpu=lots", "not a size"), ("gpu0=1GB", "not a device"),
                       (",", "names no device"), ("cpu=-5MB", "not a size")):
        with pytest.raises(ConfigError, match=named):
            parse_max_memory(bad)


@pytest.mark.parametrize("content, named", [
    ("not json", "not a readable JSON"), ("[1, 2]", "JSON object"), ("{}", "JSON object"),
    ('{"lm_head": "gpu"}', "not a device"), ('{"lm_head": true}', "maps to True"),
    ('{"lm_head": "disk"}', "--offload-folder"), ('{"lm_head": 3}', "GPU 3"),
])
def test_device_map_file_is_checked(content, named, tmp_path):
    path = tmp_path / "map.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=named):
        Placement.from_flags(str(path))


def test_device_map_file_is_checked_against_the_model(tokenizer, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({**block_map(4, set()), "model.layers.9": "cpu"}))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"model.embed_tokens": "cpu", "lm_head": "cpu"}))
    with pytest.raises(ConfigError, match=r"\['model.layers.9'\] are not modules"):
        dispatch(loaded.model, Placement.from_flags(str(unknown)))
    with pytest.raises(ConfigError, match="no entry places"):
        dispatch(loaded.model, Placement.from_flags(str(partial)))


def test_offload_folder_and_flag_combinations_are_refused_by_name(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    for folder, named in (("full", "not empty"), ("file", "existing file"), ("link", "symbolic link")):
        with pytest.raises(ConfigError, match=f"--offload-folder .*{named}"):
            Placement.from_flags("auto", offload_folder=str(tmp_path / folder))
    with pytest.raises(ConfigError, match="--device cpu and --device-map auto: give one"):
        Placement.from_flags("auto", device="cpu")
    with pytest.raises(ConfigError, match="--max-memory and --offload-folder: no effect without --device-map"):
        Placement.from_flags(None, max_memory="cpu=1GB", offload_folder=str(tmp_path / "new"))
    with pytest.raises(ConfigError, match="not one of auto, balanced nor a JSON file"):
        Placement.from_flags(str(tmp_path / "link"))
    assert Placement.from_flags(None) is None


@pytest.mark.parametrize("argv, named", [
    (["--device", "cpu", "--device-map", "auto"], "give one"),
    (["--offload-folder", "x"], "no effect without --device-map"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "not a size"),
])
def test_every_front_door_refuses_bad_placement_flags_before_loading(argv, named, capsys, monkeypatch):
    from lightning_edit import ask, cli, models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    for main, extra in ((cli.main, ["--n", "1"]), (ask.main, ["smollm2-135m", "Hello"]),
                        (cli.main, ["trace", "--n", "1"]), (cli.main, ["study", "--tables-only"])):
        assert main(extra + argv) != 0
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err


# ---- the real model, half its blocks on disk ------------------------------------------------------------------
# 15 of 30 blocks, among them every method's: ROME 4, MEMIT/AlphaEdit 3-7, FT-M 22, GRACE 26, WISE 27
SMOLLM2_DISK = set(range(0, 8)) | set(range(22, 29))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # two smollm2 edits, one reading 15 blocks from disk at every pass: slow on a busy CPU
@pytest.mark.parametrize("method", SIX)
def test_smollm2_half_on_disk_takes_and_undoes_the_same_edit(method, smollm2, tmp_path):
    from lightning_edit.models import load_model

    overrides = {  # fewer steps than the configs (the comparison holds for any): minutes, not tens of minutes
        "rome": {"progress": False, "v_num_grad_steps": 3}, "memit": {"progress": False, "v_num_grad_steps": 3},
        "alphaedit": {"progress": False, "v_num_grad_steps": 3}, "ft-m": {"num_steps": 3},
        "grace": {"num_steps": 5}, "wise": {"memory_pool": ["wikitext:8"], "num_steps": 5}}[method]
    off, folder = spread(load_model("smollm2-135m"), tmp_path, SMOLLM2_DISK)
    editor = build_editor(method, smollm2, overrides)
    layers = set(editor.touched_parameters(smollm2, [REQUEST])) | set(editor.read_parameters(smollm2, [REQUEST]))
    assert all(is_offloaded(off.model, n) for n in layers), "the method's layers are among those on disk"
    files_before, scores_before = offload_files(folder), logits(off)
    delta_whole = editor.edit(smollm2, [REQUEST])
    try:
        scores_whole = logits(smollm2)
    finally:
        delta_whole.undo(smollm2)
    delta_off = build_editor(method, off, overrides).edit(off, [REQUEST])
    for name, after in delta_whole.weights_after.items():
        assert torch.equal(read_tensor(off.model, name), after), name
    assert torch.allclose(logits(off), scores_whole, atol=1e-5, rtol=0)
    delta_off.undo(off)
    assert offload_files(folder) == files_before
    assert torch.equal(logits(off), scores_before)

"""Issue 22, findings 12 and 14-17: the front doors and input files (study YAML, trace, request data, the EasyEdit
layer, editor checkpoints) refuse what is wrong by name, before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_edit.cli import main
from lightning_edit.errors import CheckpointError, ConfigError, DataError, LightningEditError, RequestError


def _study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- finding 12: study YAML ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ("name: t\nmethods: rome\n", "methods"),                 # a string, iterated letter by letter before
    ("name: t\ndatasets: {zsre: 0}\n", "datasets"),          # ({}: no single-edit cells, see test_study.py)
    ("name: t\ndatasets: [zsre]\n", "datasets"),             # AttributeError before
    ("name: ../x\n", "name"),                                # written outside results/ before
    ("name: t\nmethods: [rome, nope]\n", "nope"),
    ("name: t\nmethods: []\n", "methods"),
    ("name: t\nbatch_sizes: 3\n", "batch_sizes"),
    ("name: t\nfluency: maybe\n", "fluency"),
    ("name: t\nmultihop_n: -1\n", "multihop_n"),
    ("name: t\noverrides: {rome: 3}\n", "overrides"),
    ("- a\n- b\n", "mapping"),
    ("name: t\nmethods: [rome\n", "YAML"),
    ("methods: [rome]\n", "name"),
])
def test_study_yaml_is_typed(tmp_path, body, field):
    with pytest.raises(ConfigError, match=field):
        from lightning_edit.evaluation.study import StudyConfig
        StudyConfig.load(_study(tmp_path, body))


def test_study_cli_refuses_bad_yaml_and_empty_methods(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["study", "--config", _study(tmp_path, "name: t\nmethods: rome\n"), "--results-dir", str(results),
                 "--quiet"]) == 2
    assert "'methods'" in capsys.readouterr().err
    assert main(["study", "--methods", ",", "--results-dir", str(results), "--quiet"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["study", "--methods", "rome,nope", "--results-dir", str(results), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not results.exists()  # refused before anything was written


def test_study_default_folder_stays_under_results():
    from lightning_edit.evaluation.study import safe_folder_name

    assert "/" not in safe_folder_name("../../etc/x") and not safe_folder_name("..").startswith(".")


# ---- finding 14: trace ------------------------------------------------------------------------------------------

def _trace_records(tmp_path: Path, case_ids=(0, 1)) -> str:
    records = [{"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "target_true": "French",
                "subject": "Danielle Darrieux", "case_id": case_ids[0]},
               {"prompt": "Toko Yasuda, the", "target_new": "piano", "target_true": "guitar", "subject": "Toko Yasuda",
                "case_id": case_ids[1]}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(records))
    return str(path)


@pytest.mark.parametrize("flags, name", [
    (["--noise", "inf"], "--noise"),
    (["--noise", "nan"], "--noise"),
    (["--offset", "5"], "--offset"),  # zero records: a division by zero after the model loaded, before
])
def test_trace_refuses_before_loading(tmp_path, capsys, flags, name):
    # an empty folder passes the model-source check and cannot load: a check made after loading fails on it instead
    (tmp_path / "empty-model").mkdir()
    (tmp_path / "empty-model" / "config.json").write_text('{"model_type": "gpt2"}')  # no weights: cannot load
    argv = ["trace", "--model", str(tmp_path / "empty-model"), "--data", _trace_records(tmp_path), "--output", str(tmp_path / "o")]
    assert main(argv + flags + ["--quiet"]) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_trace_file_names_are_sanitised():
    from lightning_edit.evaluation.trace_report import record_file_name

    assert record_file_name(0) == "record_0.png"
    for bad in ("../../evil", "/etc/passwd", "a/b", "..", "x" * 500):
        name = record_file_name(bad)
        assert "/" not in name and ".." not in name and len(name) < 120
    assert record_file_name("a/b") != record_file_name("a_b")


def test_trace_writes_each_record_as_it_finishes(tmp_path, tokenizer, monkeypatch):
    from conftest import save_tiny
    from lightning_edit.evaluation import tracing

    model_dir = save_tiny("llama", tokenizer, tmp_path / "tiny")
    real, calls = tracing.PromptTracer.trace, []

    def trace_then_fail(self, kinds):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second record never finishes
        return real(self, kinds)

    monkeypatch.setattr(tracing.PromptTracer, "trace", trace_then_fail)
    out = tmp_path / "trace"
    assert main(["trace", "--model", str(model_dir), "--data", _trace_records(tmp_path, ("../up", 1)), "--n", "2",
                 "--samples", "2", "--window", "2", "--kinds", "mlp", "--output", str(out), "--quiet"]) == 130
    names = {p.name for p in out.iterdir()}
    assert "records.csv" in names and "cells.csv" in names  # the first record is on disk
    plots = [n for n in names if n.endswith(".png")]
    assert len(plots) == 1 and plots[0].startswith("record_") and ".." not in plots[0]
    assert not (tmp_path / "up.png").exists() and not any(p.name.startswith(".") for p in out.iterdir())
    assert "../up" in (out / "records.csv").read_text()


# ---- finding 15: request data -----------------------------------------------------------------------------------

def _rome_record(prompt: str) -> dict:
    return {"case_id": 0, "requested_rewrite": {"prompt": prompt, "subject": "Paris", "target_new": {"str": "Rome"},
                                               "target_true": {"str": "France"}}}


@pytest.mark.parametrize("prompt, expected", [
    ("{} is in {1}", "Paris is in {1}"),           # IndexError before
    ("{} {:99999}", "Paris {:99999}"),             # a 99999-wide field before (and a gigabyte with 999999999)
    ("{0.__class__} {}", "{0.__class__} Paris"),   # an attribute lookup before
    ("{} and {}", "Paris and Paris"),
])
def test_prompts_from_files_never_pass_through_str_format(tmp_path, prompt, expected):
    from lightning_edit.data import load_requests

    path = tmp_path / "rome.json"
    path.write_text(json.dumps([_rome_record(prompt)]))
    assert load_requests(str(path))[0].prompt == expected


def test_deeply_nested_json_is_a_data_error(tmp_path):
    from lightning_edit.data import load_requests

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="deep.json.*nested too deeply"):
        load_requests(str(path))
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"prompt": "a", "target_new": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataError, match="deep.jsonl"):
        load_requests(str(lines))


def test_data_files_are_bounded_and_regular(tmp_path, monkeypatch):
    from lightning_edit.data import load_requests, loaders

    with pytest.raises(DataError, match="/dev/zero.*not a regular file"):
        loaders.read_data_bytes(Path("/dev/zero"))  # read forever before
    with pytest.raises(DataError, match="/dev/zero"):
        load_requests("/dev/zero")
    monkeypatch.setattr(loaders, "MAX_DATA_FILE_BYTES", 100)
    big = tmp_path / "big.json"
    big.write_text(json.dumps([{"prompt": "x" * 200, "target_new": "y"}]))
    with pytest.raises(DataError, match="big.json.*larger than"):
        load_requests(str(big))


@pytest.mark.parametrize("command", ["verify", "get"])
def test_data_get_verify_refuse_a_folder_where_a_file_belongs(tmp_path, capsys, command):
    from lightning_edit.data.fetch import main as data_main, select

    entry = select("zsre")[0]
    (tmp_path / entry.path).mkdir(parents=True)  # a folder under the file's name
    assert data_main([command, "zsre", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert entry.path in err and "folder" in err


@pytest.mark.parametrize("url, name", [
    ("hf://datasets/a--b/c/x.json", "a--b"),
    ("hf://datasets/-owner/c/x.json", "-owner"),
    ("hf://datasets/owner/c/../../x.json", ".."),
    ("hf://datasets/owner/c@bad~rev/x.json", "bad~rev"),
])
def test_malformed_hub_urls_are_named(url, name):
    from lightning_edit.data import load_requests

    with pytest.raises(DataError, match=name):
        load_requests(url)


def test_unpinned_hub_file_warns_and_records_its_commit(tmp_path, monkeypatch, caplog):
    import huggingface_hub

    from lightning_edit.data import load_requests

    commit = "0123456789abcdef0123456789abcdef01234567"
    local = tmp_path / "snapshots" / commit / "x.json"
    local.parent.mkdir(parents=True)
    local.write_text(json.dumps([{"prompt": "a", "target_new": "b", "target_true": "c"}, {"prompt": 3, "target_new": "b",
                                                                                          "target_true": "c"}]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **kw: str(local))
    with caplog.at_level("WARNING"):
        with pytest.raises(DataError, match=f"hf://datasets/owner/name@{commit}/x.json: record 1"):
            load_requests("hf://datasets/owner/name/x.json")
    assert "names no revision" in caplog.text and commit in caplog.text


# ---- finding 16: the EasyEdit layer -----------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name, raw, field", [
    ("WISEHyperParams", {"act_margin": 5.0}, "act_margin"),           # TypeError before
    ("WISEHyperParams", {"act_margin": [5.0, 20.0]}, "act_margin"),   # gamma silently kept at its default before
    ("WISEHyperParams", {"act_margin": [5.0, "x", 1.0]}, "act_margin"),
    ("FTHyperParams", {"objective_optimization": ["target_new"]}, "objective_optimization"),  # TypeError before
    ("ROMEHyperParams", {"layers": 5}, "layers"),
    ("ROMEHyperParams", {"context_template_length_params": [[5]]}, "context_template_length_params"),
])
def test_easyedit_values_of_the_wrong_shape_are_config_errors(cls_name, raw, field):
    import warnings

    from lightning_edit import easyedit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=field):
            getattr(easyedit, cls_name).from_easyedit_dict(raw)


@pytest.mark.parametrize("content, match", [
    ("alg_name: ROME\nlayers: [5\n", "not valid YAML"),
    (b"alg_name: ROME\nmodel_name: \xff\xfe\n", "UTF-8"),
    ("- 1\n- 2\n", "mapping"),
])
def test_easyedit_yaml_errors_are_config_errors(tmp_path, content, match):
    from lightning_edit.easyedit import ROMEHyperParams

    path = tmp_path / "rome.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=f"{path.name}.*{match}|{match}.*{path.name}"):
        ROMEHyperParams.from_hparams(path)


@pytest.mark.parametrize("kwargs, name", [
    ({"target_new": 5}, "target_new"),                                              # TypeError before
    ({"target_new": ["x"], "ground_truth": 3}, "ground_truth"),
    ({"target_new": ["x"], "locality_inputs": {"n": {"prompt": [["a", "b", "c"]], "ground_truth": [["1", "2"]]}}},
     "locality_inputs"),                                                            # cut to 2 probes before
    ({"target_new": ["x"], "locality_inputs": {"n": {"prompt": ["a"], "ground_truth": [3]}}}, "ground_truth"),  # "3"
    ({"target_new": ["x"], "portability_inputs": {"p": {"prompt": [4], "ground_truth": ["a"]}}}, "prompt"),
    ({"target_new": ["x"], "rephrase_prompts": [7]}, "rephrase_prompts"),
    ({"target_new": ["x"], "locality_inputs": ["n"]}, "locality_inputs"),
])
def test_requests_from_lists_refuses_instead_of_truncating_or_stringifying(kwargs, name):
    from lightning_edit.requests import requests_from_lists

    with pytest.raises(RequestError, match=name):
        requests_from_lists(prompts=["The capital of France is"], **kwargs)


def test_request_record_without_prompt_is_a_request_error():
    from lightning_edit.requests import EditRequest

    with pytest.raises(RequestError, match="prompt"):
        EditRequest.from_dict({"target_new": "x"})  # KeyError before
    with pytest.raises(RequestError, match="kind"):
        EditRequest.from_dict({"prompt": "a", "target_new": "b", "locality": [{"prompt": "c", "answer": "d", "kind": [1]}]})


# ---- finding 17: editor checkpoints and saved patches -----------------------------------------------------------

@pytest.fixture
def mend_checkpoint(tmp_path, tokenizer):
    import torch

    from conftest import build_tiny
    from lightning_edit.checkpoints import save_editor_checkpoint
    from lightning_edit.editors.learned.mend import MENDEditor, MENDHyperParams

    loaded = build_tiny("llama", tokenizer)
    hp = MENDHyperParams.for_model("mend", loaded.name, loaded.layout.family, {"rank": 8, "edit_lr_init": 0.5})
    network = MENDEditor(hp).build_network(loaded)
    with torch.no_grad():
        network.edit_lrs.fill_(0.5)
    directory = save_editor_checkpoint(tmp_path / "mend-tiny", method="mend", state_dict=network.state_dict(),
                                       config=hp.architecture(), loaded=loaded)
    return loaded, directory


def _rewrite(directory: Path, name: str, content: bytes) -> None:
    """Replace a checkpoint file and its manifest hash, as whoever hands the folder over can."""
    from lightning_edit.hashing import sha256_file

    (directory / name).write_bytes(content)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(directory / name)
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("content", [b'{"method": "mend", "files": {"\xff": 1}}', b"[1, 2]", b'{"files": [1]}'])
def test_checkpoint_manifest_not_utf8_or_not_an_object(mend_checkpoint, content):
    from lightning_edit.checkpoints import load_editor_checkpoint

    _, directory = mend_checkpoint
    (directory / "manifest.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_editor_checkpoint(directory, method="mend")


@pytest.mark.parametrize("change, field", [
    ({"rank": -1}, "rank"),
    ({"rank": 70_000}, "rank"),
    ({"rank": "abc"}, "rank"),
    ({"layers": [99]}, "layers"),
    ({"edit_lr_init": float("inf")}, "edit_lr_init"),
    ({"n_hidden": {"a": 1}}, "n_hidden"),
])
def test_checkpoint_architecture_is_validated_before_the_network_is_built(mend_checkpoint, change, field):
    import yaml

    from lightning_edit.editors import build_editor

    loaded, directory = mend_checkpoint
    config = yaml.safe_load((directory / "config.yaml").read_text())
    _rewrite(directory, "config.yaml", yaml.safe_dump({**config, **change}).encode())
    editor = build_editor("mend", loaded, {"editor_checkpoint": str(directory)})
    with pytest.raises(CheckpointError, match=f"config.yaml.*{field}"):
        editor.prepare(loaded)


def test_checkpoint_templates_name_only_their_fields(tokenizer):
    from conftest import build_tiny
    from lightning_edit.checkpoints import EditorCheckpoint
    from lightning_edit.editors.learned.hypernetwork import checked_architecture
    from lightning_edit.editors.learned.serac import SERACHyperParams

    loaded = build_tiny("llama", tokenizer)
    hp = SERACHyperParams(scope_layer=1)
    for template in ("{prompt} {target} {prompt.__class__}", "{prompt:99999999} {target}", "{0} {prompt} {target}"):
        ckpt = EditorCheckpoint(directory=Path("x"), state_dict={}, config={"edit_template": template})
        with pytest.raises(CheckpointError, match="edit_template"):
            checked_architecture(hp, ckpt, loaded)


def test_checkpoint_tensor_count_is_bounded(mend_checkpoint):
    import torch
    from safetensors.torch import save_file

    from lightning_edit.checkpoints import load_editor_checkpoint

    loaded, directory = mend_checkpoint
    many = directory.parent / "many.safetensors"
    save_file({f"t{i}": torch.zeros(1) for i in range(5000)}, str(many))
    _rewrite(directory, "editor.safetensors", many.read_bytes())
    with pytest.raises(CheckpointError, match="5000 tensors"):
        load_editor_checkpoint(directory, method="mend")


def test_tensor_file_header_is_checked_before_reading(tmp_path):
    import struct

    from lightning_edit.tensor_limits import check_tensor_file

    def crafted(header: dict, data: bytes = b"") -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "x.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return path

    with pytest.raises(CheckpointError, match="shape"):
        check_tensor_file(crafted({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4), "t", 10)
    with pytest.raises(CheckpointError, match="byte range"):
        check_tensor_file(crafted({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1 << 40]}}, b"\0" * 4), "t", 10)
    with pytest.raises(CheckpointError, match="header"):
        (tmp_path / "y.safetensors").write_bytes(struct.pack("<Q", 1 << 60))
        check_tensor_file(tmp_path / "y.safetensors", "t", 10)


def test_saved_patches_are_bounded_before_loading(tmp_path, monkeypatch):
    from lightning_edit.models import saving

    calls = []
    monkeypatch.setattr(saving, "check_tensor_file", lambda *a: calls.append(a) or (_ for _ in ()).throw(
        CheckpointError("bounded")))
    monkeypatch.setattr(saving, "verify_manifest", lambda *a, **k: {"weights_fingerprint": "f"})

    class Loaded:
        name = "m"

        def weights_fingerprint(self):
            return "f"

    with pytest.raises(CheckpointError, match="bounded"):
        saving.load_patches(Loaded(), tmp_path)
    assert calls and calls[0][2] == saving.MAX_PATCH_TENSORS


def test_hub_editor_ids_take_a_revision_and_unpinned_ones_warn(tmp_path, monkeypatch, caplog):
    import huggingface_hub

    from lightning_edit.checkpoints import is_hub_id, resolve_editor_dir

    assert is_hub_id("user/repo@v1") and is_hub_id("user/repo")
    commit = "0123456789abcdef0123456789abcdef01234567"
    calls = []

    def download(repo, revision=None, **kw):
        calls.append((repo, revision))
        return str(tmp_path / "snapshots" / (revision or commit))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert resolve_editor_dir("user/repo@v1").name == "v1"
    assert calls[-1] == ("user/repo", "v1")
    with caplog.at_level("WARNING"):
        assert resolve_editor_dir("user/repo").name == commit
    assert "names no revision" in caplog.text and commit in caplog.text
    with pytest.raises(CheckpointError, match="revision"):
        resolve_editor_dir("user/repo@v1", revision="v2")

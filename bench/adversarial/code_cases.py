"""Files and URLs that try to make the program run code or read outside its folders: ``train.py --ckpt-path``
(URLs, pickles of code, DeepSpeed folders), a ``--config`` naming classes to import, a saved IKE edit naming a module, a model folder's ``config.json``
naming a path; and the shared preflight at train.py and the Python API."""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Callable

from .common import Case, write
from .tiny import tiny_model_dir

HUB_SHAPED = "nobody/no-such-model"  # passes the model check, would fail to load offline: the refusal must come first


class RunsCode:
    """Unpickled without ``weights_only``, this writes ``marker``: a case fails if the marker exists afterwards."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def _never_ran(marker: Path, run: Callable[[], int]) -> Callable[[], int]:
    """``run`` must refuse (non-zero) and leave no marker; a marker is a failure the bench reports as a traceback."""
    def call() -> int:
        code = run()
        if marker.exists():
            raise RuntimeError(f"code from a file ran: {marker} was written")
        return code
    return call


def _train(*argv: str) -> Callable[[], int]:
    from lightning_edit.cli import main

    return lambda: main(["train", *argv])


def _code_pickle(folder: Path, name: str) -> tuple[Path, Path]:
    import torch

    marker = folder / f"{name}.marker"
    target = folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "callbacks": RunsCode(marker)}, target)
    return target, marker


def _ckpt_cases(folder: Path) -> list[Case]:
    evil, marker = _code_pickle(folder, "evil.ckpt")
    ds_ok = folder / "ds" / "epoch=0.ckpt" / "checkpoint"
    ds_ok.mkdir(parents=True)
    with open(ds_ok / "zero_pp_rank_0_mp_rank_00_optim_states.pt", "wb") as f:
        pickle.dump(RunsCode(folder / "ds.marker"), f)
    config = write(folder, "run.yaml", "ckpt_path: https://example.com/last.ckpt\n")
    text = write(folder, "text.ckpt", "not a checkpoint")
    (folder / "empty-dir").mkdir()
    flag = "--ckpt-path"
    return [
        Case("train --ckpt-path http URL", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, "http://x.org/a.ckpt"]),
        Case("train --ckpt-path https URL", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, "https://x.org/a.ckpt"]),
        Case("train --ckpt-path s3 URL", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, "s3://bucket/a.ckpt"]),
        Case("train --ckpt-path missing file", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, str(folder / "no.ckpt")]),
        Case("train --ckpt-path a pickle that runs code", "train", flag,
             call=_never_ran(marker, _train("mend", HUB_SHAPED, flag, str(evil)))),
        Case("train --ckpt-path DeepSpeed folder with a code pickle", "train", flag,
             call=_never_ran(folder / "ds.marker", _train("mend", HUB_SHAPED, flag, str(ds_ok.parent)))),
        Case("train --ckpt-path an empty folder", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, str(folder / "empty-dir")]),
        Case("train --ckpt-path a text file", "train", flag, argv=["train", "mend", HUB_SHAPED, flag, text]),
        Case("train --config with ckpt_path: URL", "train", "--ckpt-path", argv=["train", "mend", HUB_SHAPED, "--config", config]),
    ]


def _class_path_cases(folder: Path) -> list[Case]:
    """A shared ``--config`` naming a class for jsonargparse to import: the module writes a marker when imported."""
    mods = folder / "class-mods"
    write(mods, "evil_cb_mod.py", f"open({str(folder / 'cb.marker')!r}, 'w').write('ran')\nclass X: pass\n")
    sections = {
        "trainer.callbacks class_path": "trainer:\n  callbacks:\n    - class_path: evil_cb_mod.X\n",
        "trainer.logger class_path": "trainer:\n  logger:\n    class_path: evil_cb_mod.X\n",
        "trainer.plugins class_path": "trainer:\n  plugins:\n    - class_path: evil_cb_mod.X\n",
        "trainer.strategy dotted name": "trainer:\n  strategy: evil_cb_mod.X\n",
        "class_path under hparams": "hparams:\n  x:\n    class_path: evil_cb_mod.X\n",
    }

    def run(config: str) -> Callable[[], int]:
        def call() -> int:
            sys.path.insert(0, str(mods))
            try:
                return _train("mend", HUB_SHAPED, "--config", config)()
            finally:
                sys.path.remove(str(mods))
        return _never_ran(folder / "cb.marker", call)

    return [Case(f"train --config naming a class to import: {what}", "train", "--config",
                 call=run(write(folder, f"cp{i}.yaml", text))) for i, (what, text) in enumerate(sections.items())]


def _model_folder(folder: Path, name: str, config) -> str:
    target = folder / name
    target.mkdir(parents=True)
    write(target, "config.json", config)
    return str(target)


def _model_type_cases(folder: Path) -> list[Case]:
    bad = {
        "model_type naming a path": {"model_type": "../../../../etc/passwd"},
        "model_type a list": {"model_type": ["llama"]},
        "config.json a list": [1, 2],
        "config.json not JSON": "{model_type:",
        "config.json nested 100000 deep": "[" * 100000 + "]" * 100000,
    }
    out = []
    for i, (what, config) in enumerate(bad.items()):
        model = _model_folder(folder, f"m{i}", config)
        out.append(Case(f"--model folder: {what}", "edit", "config.json", argv=["--model", model]))
        out.append(Case(f"train MODEL folder: {what}", "train", "config.json", argv=["train", "mend", model]))
    return out


def _saved_ike_naming_a_module(folder: Path) -> Callable[[], int]:
    """A saved two-context IKE edit whose patches.json names an importable module as its sentence model, both
    manifests rewritten to match (whoever writes the files writes the manifests)."""
    def call() -> int:
        from lightning_edit.editors import build_editor
        from lightning_edit.manifest import MANIFEST_FILE, write_manifest
        from lightning_edit.models import load_model
        from lightning_edit.models.saving import PATCH_DIR, PATCHES_JSON, save_edited_model
        from lightning_edit.requests import EditRequest

        from .tiny import REQUESTS

        loaded = load_model(str(tiny_model_dir(folder)))
        editor = build_editor("ike", loaded, {"k": 0, "cache_embeddings": False})
        requests = [EditRequest.from_dict(r) for r in REQUESTS]
        for r in requests:
            editor.edit(loaded, [r])
        saved = folder / "ike-saved"
        save_edited_model(loaded, saved, method="ike", requests=requests, record={"method": "ike"})
        mods = folder / "mods"
        write(mods, "evil_encoder_pkg.py", f"open({str(folder / 'ike.marker')!r}, 'w').write('ran')\n")
        sys.path.insert(0, str(mods))
        try:
            entries = json.loads((saved / PATCH_DIR / PATCHES_JSON).read_text())
            entries[0]["config"]["sentence_model"] = "evil-encoder-pkg"
            (saved / PATCH_DIR / PATCHES_JSON).write_text(json.dumps(entries))
            for directory in (saved / PATCH_DIR, saved):
                old = json.loads((directory / MANIFEST_FILE).read_text())
                files = [f for f in old["files"]]
                write_manifest(directory, files, old["format"], **{k: v for k, v in old.items() if k not in ("format", "files")})
            return _never_ran(folder / "ike.marker", lambda: _load_refused(str(saved)))()
        finally:
            sys.path.remove(str(mods))
    return call


def _load_refused(directory: str) -> int:
    from lightning_edit.models import load_model

    load_model(directory)  # raises a CheckpointError (the bench counts it as refused)
    return 0


def _api_cases(folder: Path) -> list[Case]:
    def api_with_model(name: str) -> Callable[[], object]:
        def call() -> object:
            from lightning_edit.api import BaseEditor
            from lightning_edit.editors.ft import FTMHyperParams

            return BaseEditor.from_hparams(FTMHyperParams(model_name=name))
        return call

    def easyedit_with_model(name: str) -> Callable[[], object]:
        def call() -> object:
            from lightning_edit.easyedit import BaseEditor, FTHyperParams

            return BaseEditor.from_hparams(FTHyperParams(model_name=name))
        return call

    list_config = _model_folder(folder, "api-list", [1])
    path_type = _model_folder(folder, "api-path", {"model_type": "../x"})
    return [
        Case("api: model_name a folder whose config.json is a list", "api", "config.json", call=api_with_model(list_config)),
        Case("api: model_name a folder whose model_type is a path", "api", "model_type", call=api_with_model(path_type)),
        Case("api: model_name a missing folder", "api", "model_name", call=api_with_model(str(folder / "none") + "/")),
        Case("api: model_name not a model", "api", "model_name", call=api_with_model("no-such-model")),
        Case("easyedit: model_name a folder whose config.json is a list", "api", "config.json",
             call=easyedit_with_model(list_config)),
    ]


def cases(folder: Path) -> list[Case]:
    out = _ckpt_cases(folder) + _class_path_cases(folder) + _model_type_cases(folder) + _api_cases(folder)
    out.append(Case("saved IKE edit naming a module as its sentence model", "saved-dir", "registered encoder",
                    call=_saved_ike_naming_a_module(folder)))
    return out

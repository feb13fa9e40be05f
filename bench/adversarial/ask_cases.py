"""Bad inputs thrown at ``lightning-edit ask``: the same preflight as ``edit.py`` (device, model, method and its
hyperparameters, control tokens, context length), and saved folders whose ``edits.json`` is not covered by a
manifest (never read, so the base model it names is never downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

from .common import Case, write
from .tiny import tiny_model_dir

EDIT = "The mother tongue of Danielle Darrieux is|English|Danielle Darrieux"


def _saved_without_manifest(folder: Path) -> str:
    """A model folder with an ``edits.json`` naming a base model to fetch, and no manifest."""
    import shutil

    target = folder / "unverified"
    shutil.copytree(tiny_model_dir(folder), target)
    write(target, "edits.json", {"method": "rome", "base_model": "attacker/model-to-download", "edits": [
        {"requests": [{"prompt": "The capital of France is", "target_new": "Rome"}]}]})
    return str(target)


def _saved_with_rewritten_record(folder: Path) -> str:
    """A sealed saved folder whose ``edits.json`` was changed afterwards (the manifest no longer matches)."""
    import shutil

    from lightning_edit.manifest import write_manifest
    from lightning_edit.models.saving import SAVED_MODEL_FORMAT

    target = folder / "rewritten"
    shutil.copytree(tiny_model_dir(folder), target)
    write(target, "edits.json", {"method": "rome", "base_model": "smollm2-135m", "edits": []})
    write_manifest(target, [p.name for p in target.iterdir() if p.is_file()], SAVED_MODEL_FORMAT)
    write(target, "edits.json", {"method": "rome", "base_model": "attacker/model-to-download", "edits": []})
    return str(target)


def cases(folder: Path) -> list[Case]:
    tiny = str(tiny_model_dir(folder))
    config_list = folder / "cfg-list"
    config_list.mkdir()
    write(config_list, "config.json", [1])
    path_type = folder / "cfg-path"
    path_type.mkdir()
    write(path_type, "config.json", json.dumps({"model_type": "../../x"}))
    ask = ["ask"]
    return [
        Case("ask --device tpu", "ask", "--device", argv=ask + [tiny, "p", "--device", "tpu"]),
        Case("ask --device cuda on a CPU-only torch", "ask", "--device", argv=ask + [tiny, "p", "--device", "cuda"]),
        Case("ask --max-new-tokens 0", "ask", "--max-new-tokens", argv=ask + [tiny, "p", "--max-new-tokens", "0"]),
        Case("ask a folder whose config.json is a list", "ask", "config.json", argv=ask + [str(config_list), "p"]),
        Case("ask a folder whose model_type is a path", "ask", "model_type", argv=ask + [str(path_type), "p"]),
        Case("ask a model name with '..'", "ask", "MODEL_OR_DIR", argv=ask + ["a/../b", "p"]),
        Case("ask a saved folder without a manifest (edits.json names a base to download)", "ask", "manifest",
             argv=ask + [_saved_without_manifest(folder)]),
        Case("ask a saved folder whose edits.json changed after saving", "ask", "edits.json",
             argv=ask + [_saved_with_rewritten_record(folder)]),
        Case("ask --set v_lr=nan (hyperparameters merged before loading)", "ask", "v_lr",
             argv=ask + [tiny, "--edit", EDIT, "--set", "v_lr=nan"]),
        Case("ask --set an unknown field", "ask", "no_such_field", argv=ask + [tiny, "--edit", EDIT, "--set", "no_such_field=1"]),
        Case("ask --set layers=[99]", "ask", "layers", argv=ask + [tiny, "--edit", EDIT, "--set", "layers=[99]"],
             needs_model=True),
        Case("ask --method mend without --editor", "ask", "--editor", argv=ask + [tiny, "--method", "mend", "--edit", EDIT]),
        Case("ask --editor for a method without one", "ask", "--editor",
             argv=ask + [tiny, "--method", "rome", "--editor", str(folder), "--edit", EDIT]),
        Case("ask --edit with a control token in the target", "ask", "<|endoftext|>",
             argv=ask + [tiny, "--method", "ft-m", "--edit", "The sky is|<|endoftext|>"], needs_model=True),
        Case("ask a PROMPT with a control token", "ask", "<|endoftext|>", argv=ask + [tiny, "Hi <|endoftext|> there"],
             needs_model=True),
        Case("ask a PROMPT longer than the context", "ask", "positions", argv=ask + [tiny, "word " * 600], needs_model=True),
        Case("ask --requests a folder", "ask", "--data", argv=ask + [tiny, "--requests", str(folder)]),
        Case("ask --data a folder", "ask", "--data", argv=ask + [tiny, "--data", str(folder)]),
    ]

"""Writers and artefacts (issue 22, findings 4-8): train.py --output and edit.py --save/--output onto what must not be
written into, hand-crafted saved directories (door "saved-dir"), and damaged caches that must be recomputed (door
"cache": handled when the result is intact)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .common import Case
from .tiny import requests_file, tiny_loaded


def _targets(folder: Path) -> dict[str, Path]:
    """Outputs that must be refused: a non-empty folder, a file, links, a folder under a file."""
    full = folder / "full"
    full.mkdir()
    (full / "README.md").write_text("someone's notes")
    (folder / "file.txt").write_text("x")
    (folder / "elsewhere").mkdir()
    (folder / "link").symlink_to(folder / "elsewhere")
    (folder / "dangling").symlink_to(folder / "nowhere")
    return {"a non-empty folder": full, "an existing file": folder / "file.txt", "a symlink to a folder": folder / "link",
            "a dangling symlink": folder / "dangling", "a folder under a file": folder / "file.txt" / "out"}


def _output_cases(folder: Path) -> list[Case]:
    out = []
    for what, target in _targets(folder).items():
        out.append(Case(what=f"train.py --output onto {what}", door="train", name="--output",
                        argv=["train", "mend", "smollm2-135m", "--output", str(target), "--run-dir", str(folder / "run"),
                              "--quiet"]))
        out.append(Case(what=f"--save onto {what}", door="edit", name="--save", argv=["--save", str(target)]))
    out.append(Case(what="--output in a folder under a file", door="edit", name="--output",
                    argv=["--output", str(folder / "file.txt" / "r.json")]))
    return out


# --- hand-crafted saved directories -----------------------------------------------------------------------------

def _saved_base(folder: Path) -> Path:
    from lightning_edit.models.saving import save_edited_model

    base = folder / "saved-base"
    if not base.exists():
        save_edited_model(tiny_loaded(), base, method="ft-m", requests=[], record={"method": "ft-m"})
    return base


def _manifest(target: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((target / "manifest.json").read_text())
    change(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


SAVED_DIR_DAMAGE: list[tuple[str, Callable[[Path], object], str]] = [
    ("manifest does not list the weights file", lambda d: _manifest(d, lambda m: m["files"].pop("model.safetensors")),
     "model.safetensors"),
    ("manifest lists no weight file at all (weights removed too)",
     lambda d: (_manifest(d, lambda m: m["files"].pop("model.safetensors")), (d / "model.safetensors").unlink()),
     "weight file"),
    ("an unlisted weight file beside the listed one", lambda d: (d / "pytorch_model.bin").write_bytes(b"x"), "pytorch_model.bin"),
    ("an unlisted config file", lambda d: (d / "adapter_config.json").write_text("{}"), "adapter_config.json"),
    ("an unlisted file in a subfolder", lambda d: (d / "extra" / "weights.safetensors").parent.mkdir() or
     (d / "extra" / "weights.safetensors").write_bytes(b"x"), "weights.safetensors"),
    ("the listed weights file is missing", lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    ("a weight tampered after saving", lambda d: _flip_byte(d / "model.safetensors"), "model.safetensors"),
    ("the recorded weights fingerprint is wrong",
     lambda d: _manifest(d, lambda m: m.update(weights_fingerprint="0123456789abcdef")), "weights_fingerprint"),
    ("manifest is not JSON", lambda d: (d / "manifest.json").write_text("{"), "manifest.json"),
    ("manifest is a list", lambda d: (d / "manifest.json").write_text("[]"), "manifest.json"),
    ("manifest is not UTF-8", lambda d: (d / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}'), "manifest.json"),
    ("manifest lists a file outside the folder", lambda d: _manifest(d, lambda m: m["files"].update({"../x": "0"})),
     "outside"),
    ("the weights file is a symlink", lambda d: ((d / "real.bin").write_bytes((d / "model.safetensors").read_bytes()),
                                                (d / "model.safetensors").unlink(),
                                                (d / "model.safetensors").symlink_to(d / "real.bin")), "symbolic link"),
]


def _saved_dir_case(folder: Path, i: int, damage: Callable[[Path], object]) -> Callable[[], object]:
    def call():
        from lightning_edit.models import load_model

        target = folder / f"saved-{i}"
        shutil.copytree(_saved_base(folder), target)
        damage(target)
        return load_model(str(target))

    return call


# --- damaged caches: recomputed ---------------------------------------------------------------------------------

def _torn_cell(folder: Path, tear: Callable[[Path], None]) -> Callable[[], bool]:
    def call() -> bool:
        from lightning_edit.evaluation.study import StudyConfig
        from lightning_edit.study_runner import Study

        data = requests_file(folder)
        config = StudyConfig(name="t", model="tiny-gpt2", methods=["ft-m"], datasets={str(data): 1},
                             overrides={"ft-m": {"layers": [1], "num_steps": 1}})
        results = folder / f"study-{tear.__name__}"
        first = Study(config, results, progress=False, loaded=tiny_loaded()).cell("ft-m", str(data), "single", 1)
        (cell,) = (results / "cells").glob("*.json")
        tear(cell)
        again = Study(config, results, progress=False, loaded=tiny_loaded()).cell("ft-m", str(data), "single", 1)
        return (again is not None and again["summary"] == json.loads(cell.read_text())["summary"]
                and again["summary"]["reliability"] == first["summary"]["reliability"])  # seconds differ

    return call


def torn(cell: Path) -> None:
    cell.write_text(cell.read_text()[:50])


def not_an_object(cell: Path) -> None:
    cell.write_text("[1, 2]")


def other_inputs(cell: Path) -> None:
    """A whole cell whose recorded inputs are not this study's (copied in from another study)."""
    value = json.loads(cell.read_text())
    value["inputs"]["records_sha256"] = "0" * 64
    cell.write_text(json.dumps(value))


def _damaged_stats(folder: Path, damage: Callable[[Path], None]) -> Callable[[], bool]:
    def call() -> bool:
        import torch

        from lightning_edit.stats.cache_files import load_or_compute, read_verified

        path = folder / f"stats-{damage.__name__}" / "layer1.safetensors"
        spec = {"mom2": ((4, 4), (torch.float32,))}
        value = {"mom2": torch.eye(4)}
        load_or_compute(path, {"model": "m"}, spec, lambda: value, "bench")
        damage(path)
        calls = []
        got = load_or_compute(path, {"model": "m"}, spec, lambda: calls.append(1) or value, "bench")
        return calls == [1] and torch.equal(got["mom2"], value["mom2"]) and \
            torch.equal(read_verified(path, {"model": "m"}, spec)[0]["mom2"], value["mom2"])

    return call


def stats_bytes_changed(path: Path) -> None:
    _flip_byte(path)


def stats_manifest_not_json(path: Path) -> None:
    path.with_suffix(".json").write_text("{")


def stats_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def _damaged_dequantization_cache(folder: Path) -> Callable[[], bool]:
    """The real embedded model: dequantized into a fresh cache, its weights truncated, loaded again."""
    def call() -> bool:
        from lightning_edit.hashing import sha256_file
        from lightning_edit.models import load_model
        from lightning_edit.models.gguf import _gguf_path, _read_cache
        from lightning_edit.models.registry import MODELS

        cache = folder / "dequantized"
        load_model("smollm2-135m", cache_dir=cache)
        weights = cache / "models" / "smollm2-135m" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: 1 << 20])
        loaded = load_model("smollm2-135m", cache_dir=cache)  # recomputed with a warning
        spec = MODELS["smollm2-135m"]
        _read_cache(spec, cache / "models" / "smollm2-135m", sha256_file(_gguf_path(spec, cache)), loaded.model.dtype)
        return loaded.tokenizer is not None

    return call


def cases(folder: Path) -> list[Case]:
    out = _output_cases(folder)
    out += [Case(what=f"saved directory: {what}", door="saved-dir", name=name, call=_saved_dir_case(folder, i, damage))
            for i, (what, damage, name) in enumerate(SAVED_DIR_DAMAGE)]
    out += [Case(what=f"study cell {tear.__name__.replace('_', ' ')}: recomputed", door="cache", expect="handled",
                 call=_torn_cell(folder, tear)) for tear in (torn, not_an_object, other_inputs)]
    out += [Case(what=f"statistics file, {damage.__name__.replace('_', ' ')}: recomputed", door="cache",
                 expect="handled", call=_damaged_stats(folder, damage))
            for damage in (stats_bytes_changed, stats_manifest_not_json, stats_truncated)]
    out.append(Case(what="dequantization cache with truncated weights: recomputed", door="cache", expect="handled",
                    call=_damaged_dequantization_cache(folder), needs_model=True))
    return out

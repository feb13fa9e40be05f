"""Hand-crafted editor checkpoints (issue 22, finding 17): manifests that are not UTF-8 or not objects, architecture
values out of range, more tensors than an editor has, bogus tensor headers, hub ids with revisions. Each is a copy
of one valid MEND checkpoint of a tiny random GPT-2 (built once, in about a second), changed in one way, with the
manifest's hashes rewritten to match, as whoever hands over the folder can."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

from .common import GOOD, Case

_BASE: dict[Path, tuple] = {}


def _tiny_loaded():
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lightning_edit.models import LoadedModel, layout_for

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([" ".join(GOOD.values())] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=128,
                                             vocab_size=len(tokenizer))).eval()
    return LoadedModel(name="tiny-gpt2", model=model, tokenizer=tokenizer, layout=layout_for(model))


def _base(folder: Path) -> tuple:
    """(loaded, a valid MEND checkpoint folder), built on first use."""
    if folder not in _BASE:
        from lightning_edit.checkpoints import save_editor_checkpoint
        from lightning_edit.editors.learned.mend import MENDEditor, MENDHyperParams

        loaded = _tiny_loaded()
        hp = MENDHyperParams.for_model("mend", loaded.name, loaded.layout.family, {"rank": 4, "layers": [-1]})
        network = MENDEditor(hp).build_network(loaded)
        _BASE[folder] = (loaded, save_editor_checkpoint(folder / "base", method="mend", state_dict=network.state_dict(),
                                                        config=hp.architecture(), loaded=loaded))
    return _BASE[folder]


def _copy(folder: Path, name: str, change: Callable[[Path], None]) -> tuple:
    loaded, base = _base(folder)
    target = folder / name
    shutil.copytree(base, target)
    change(target)
    return loaded, target


def _rehash(directory: Path, name: str, content: bytes) -> None:
    from lightning_edit.hashing import sha256_file

    (directory / name).write_bytes(content)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(directory / name)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def _config(change: dict) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        import yaml

        config = yaml.safe_load((directory / "config.yaml").read_text())
        _rehash(directory, "config.yaml", yaml.safe_dump({**config, **change}).encode())
    return apply


def _load(folder: Path, name: str, change: Callable[[Path], None]) -> Callable[[], object]:
    """Build the MEND editor on the crafted checkpoint (what --editor DIR does once the model is loaded)."""
    def call():
        from lightning_edit.editors import build_editor

        loaded, directory = _copy(folder, name, change)
        build_editor("mend", loaded, {"editor_checkpoint": str(directory)}).prepare(loaded)
    return call


def _tensors(count: int) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        import torch
        from safetensors.torch import save_file

        extra = directory / "many.safetensors"
        save_file({f"t{i}": torch.zeros(1) for i in range(count)}, str(extra))
        _rehash(directory, "editor.safetensors", extra.read_bytes())
        extra.unlink()
    return apply


def _header(header: dict, data: bytes) -> Callable[[Path], None]:
    raw = json.dumps(header).encode()
    return lambda directory: _rehash(directory, "editor.safetensors", struct.pack("<Q", len(raw)) + raw + data)


def _template(template: str) -> Callable[[], object]:
    def call():
        from lightning_edit.checkpoints import EditorCheckpoint
        from lightning_edit.editors.learned.hypernetwork import checked_architecture
        from lightning_edit.editors.learned.serac import SERACHyperParams

        ckpt = EditorCheckpoint(directory=Path("serac-crafted"), state_dict={}, config={"edit_template": template})
        return checked_architecture(SERACHyperParams(scope_layer=1), ckpt, _tiny_loaded())
    return call


def _hub_conflict():
    from lightning_edit.checkpoints import resolve_editor_dir

    return resolve_editor_dir("user/repo@v1", revision="v2")


def cases(folder: Path) -> list[Case]:
    manifest = lambda content: lambda d: (d / "manifest.json").write_bytes(content)  # noqa: E731
    table = [
        ("manifest.json is not UTF-8 (UnicodeDecodeError before)", manifest(b'{"method": "mend", "x": "\xff"}'),
         "manifest.json"),
        ("manifest.json is a list (AttributeError before)", manifest(b"[1, 2]"), "manifest.json"),
        ("manifest.json is a string", manifest(b'"mend"'), "manifest.json"),
        ("config.yaml is a list", lambda d: _rehash(d, "config.yaml", b"- 1\n- 2\n"), "config.yaml"),
        ("config.yaml is not UTF-8", lambda d: _rehash(d, "config.yaml", b"rank: \xff\n"), "config.yaml"),
        ("architecture rank -1 (skipped validation before)", _config({"rank": -1}), "rank"),
        ("architecture rank 10**9", _config({"rank": 10**9}), "rank"),
        ("architecture rank is text", _config({"rank": "wide"}), "rank"),
        ("architecture layers [99] on a 2-block model", _config({"layers": [99]}), "layers"),
        ("architecture edit_lr_init .inf", _config({"edit_lr_init": float("inf")}), "edit_lr_init"),
        ("architecture n_hidden is a mapping", _config({"n_hidden": {"a": 1}}), "n_hidden"),
        ("editor.safetensors declares 5000 tensors", _tensors(5000), "5000 tensors"),
        ("a tensor header with a 2**80-element shape",
         _header({"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        ("a tensor header whose bytes lie past the end of the file",
         _header({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1 << 40]}}, b"\0" * 4), "byte range"),
    ]
    out = [Case(what=f"checkpoint: {what}", door="checkpoint", call=_load(folder, f"c{i}", change), name=name)
           for i, (what, change, name) in enumerate(table)]
    out += [Case(what=f"checkpoint: SERAC edit_template {t!r}", door="checkpoint", call=_template(t), name="edit_template")
            for t in ("{prompt} {target} {prompt.__class__}", "{prompt:999999999} {target}", "{0} {prompt} {target}")]
    out.append(Case(what="checkpoint: hub id user/repo@v1 with revision='v2'", door="checkpoint", call=_hub_conflict,
                    name="revision"))
    return out

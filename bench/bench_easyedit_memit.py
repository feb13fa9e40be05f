"""EasyEdit's MEMIT beside ours: the same smollm2 weights, CounterFact records, layers, steps, covariance and
scoring; prints JSON (quality, edit seconds, peak memory of each).

    pip download --no-deps easyeditor==0.0.1.dev0 -d /tmp/ee && unzip -q /tmp/ee/easyeditor-*.whl -d /tmp/ee
    python bench/bench_easyedit_memit.py --easyedit /tmp/ee [--n 20] [--offset 1000] [--threads 1]

``--easyedit`` is a folder holding EasyEdit's ``easyeditor`` package (the PyPI wheel unpacked, or a checkout of
its repository). EasyEdit puts every tensor on ``f"cuda:{hparams.device}"``; without CUDA this script runs a copy
of the package (in a temporary folder) whose device strings say ``"cpu"``, and whose ``__init__`` files are
empty so that only MEMIT's modules and what they import load (the full package imports every method's
dependencies). One adaptation more, for transformers 5, whose decoder layers return the hidden state itself
where the transformers EasyEdit was written for returned a tuple: ``compute_z``'s three ``out[0]`` reads of a
layer's output read the tensor when it is one (``_hidden``). Nothing else of EasyEdit's code changes.

Matched: layers, ``v_num_grad_steps``, ``v_lr``, ``v_weight_decay``, ``clamp_norm_factor``, ``kl_factor``,
``mom2_update_weight`` from our smollm2 configuration; EasyEdit's covariance cache is filled with our second
moments of the same layers (the same E[kkᵀ] its ``layer_stats`` would compute, from our text, since its own
needs Wikipedia from the hub). What stays EasyEdit's own: its 5 context prefixes (hard-coded there), its
value optimisation (early stop when the whole loss < 0.05), its key and update computation. Ours runs with
``--prefixes`` (3: our configuration; 5: EasyEdit's count). Each edit is one batch of ``--n`` records, scored by
this package's evaluation (reliability = teacher-forced token accuracy of target_new, EasyEdit's ``rewrite_acc``);
peak memory is the process's peak resident set during the edit (reset before each, freed heap returned first).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from _report import emit  # bench/_report.py: this folder is on sys.path when a script runs
from bench_memit_quality import KEYS  # the scores reported, as bench_memit_quality reports them

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.editors.base import Editor, HyperParams  # noqa: E402
from lightning_edit.evaluation.protocols import evaluate_editing  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402
from lightning_edit.requests import EditRequest  # noqa: E402
from lightning_edit.stats import layer_second_moments  # noqa: E402

CUDA_FSTRING = re.compile(r"""f(["'])cuda:\{[^}]*\}\1""")


def cpu_copy_of_easyedit(source: Path, into: Path) -> Path:
    """``source``'s ``easyeditor`` package copied under ``into`` with ``f"cuda:{...}"`` → ``"cpu"`` (when this torch
    has no CUDA) and empty ``__init__`` files; returns the folder to put on ``sys.path``."""
    package = source / "easyeditor"
    if not package.is_dir():
        raise SystemExit(f"--easyedit {source}: no 'easyeditor' package folder in it (unpack EasyEdit's wheel or checkout there)")
    target = into / "easyeditor"
    shutil.copytree(package, target)
    replaced = 0
    for path in target.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "__init__.py":
            path.write_text("", encoding="utf-8")
            continue
        if not torch.cuda.is_available():
            text, n = CUDA_FSTRING.subn('"cpu"', text)
            replaced += n
        if path.name == "compute_z.py":
            text = text.replace("cur_out[0][", "_hidden(cur_out)[").replace(
                "tr[hparams.layer_module_tmp.format(loss_layer)].output[0][",
                "_hidden(tr[hparams.layer_module_tmp.format(loss_layer)].output)[")
            text += "\n\ndef _hidden(out):\n    return out[0] if isinstance(out, tuple) else out\n"
        path.write_text(text, encoding="utf-8")
    print(f"EasyEdit copied to {target}; {replaced} CUDA device strings replaced", file=sys.stderr)
    return into


class EasyEditMEMIT(Editor):
    """EasyEdit's ``apply_memit_to_model`` behind this package's editor contract (so that the same evaluation,
    undo check and memory measurement apply); not registered: a benchmark's baseline only."""

    name = "easyedit-memit"
    HParams = HyperParams

    def __init__(self, memit_main: Any, easy_hparams: Any, layers: Sequence[int]):
        super().__init__(HyperParams(model_name="smollm2-135m"))
        self.memit_main, self.easy_hparams, self.layers = memit_main, easy_hparams, list(layers)

    def touched_parameters(self, loaded, requests: Sequence[EditRequest]) -> list[str]:
        return [loaded.layout.mlp_out.format(layer) + ".weight" for layer in self.layers]

    def _apply(self, loaded, requests: Sequence[EditRequest]) -> list:
        easy_requests = [{"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new, "case_id": i}
                         for i, r in enumerate(requests)]
        self.memit_main.apply_memit_to_model(loaded.model, loaded.tokenizer, easy_requests, self.easy_hparams)
        return []


def easyedit_editor(loaded, easyedit_root: Path, ours: dict) -> EasyEditMEMIT:
    sys.path.insert(0, str(easyedit_root))
    from easyeditor.models.memit import memit_main
    from easyeditor.models.memit.memit_hparams import MEMITHyperParams

    n_layers = loaded.layout.num_layers(loaded.model)
    hp = MEMITHyperParams(
        layers=ours["layers"], layer_selection="all", fact_token="subject_last", v_num_grad_steps=ours["v_num_grad_steps"],
        v_lr=ours["v_lr"], v_loss_layer=n_layers - 1, v_weight_decay=ours["v_weight_decay"],
        clamp_norm_factor=ours["clamp_norm_factor"], kl_factor=ours["kl_factor"], mom2_adjustment=True,
        mom2_update_weight=ours["mom2_update_weight"], rewrite_module_tmp="model.layers.{}.mlp.down_proj",
        layer_module_tmp="model.layers.{}", mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.norm",
        lm_head_module="model.embed_tokens",  # tied: named_parameters() lists the shared matrix under this name only
        mom2_dataset="wikipedia", mom2_n_samples=ours["mom2_n_tokens"], mom2_dtype="float32", alg_name="MEMIT",
        device=0, model_name="smollm2-135m", stats_dir=str(easyedit_root / "stats"))
    # Our E[kkᵀ] of the same layers in EasyEdit's covariance cache (its get_cov reads it before computing any)
    moments = layer_second_moments(loaded, ours["layers"], n_tokens=ours["mom2_n_tokens"], progress=False)
    model_name = loaded.model.config._name_or_path.replace("/", "_")
    for layer, mom2 in moments.items():
        memit_main.COV_CACHE[(model_name, hp.rewrite_module_tmp.format(layer))] = mom2.float().cpu()
    return EasyEditMEMIT(memit_main, hp, ours["layers"])


def score(loaded, editor: Editor, requests) -> dict:
    report = evaluate_editing(loaded, editor, requests, protocol="batch", batch_size=len(requests), fluency=False,
                              progress=False)
    eff = report.efficiency
    return {**{k: report.post.get(k) for k in KEYS},
            "edits_taken": sum(1 for r in report.requests if r["post"].get("reliability_exact", 0.0) >= 1.0),
            "edit_seconds_total": round(eff["time_split_seconds"]["edit"], 1), "peak_memory_mb": eff["peak_memory_mb"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--easyedit", required=True, type=Path, help="folder holding EasyEdit's 'easyeditor' package")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--offset", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prefixes", default="3,5", help="our context_prefixes values to run beside EasyEdit")
    p.add_argument("--order", default="easyedit,ours", help="which runs first (the process's memory is shared)")
    p.add_argument("--seed", type=int, default=0, help="seed of both sides' context prefix sampling")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m")
    requests = load_requests("counterfact", n=args.n, offset=args.offset)
    ours = build_editor("memit", loaded).hparams.to_dict()
    out: dict = {"model": "smollm2-135m", "n": args.n, "offset": args.offset, "threads": args.threads, "seed": args.seed,
                 "load_1min_before": round(os.getloadavg()[0], 2), "matched": {k: ours[k] for k in (
                     "layers", "v_num_grad_steps", "v_lr", "v_weight_decay", "clamp_norm_factor", "kl_factor",
                     "mom2_update_weight", "mom2_n_tokens")}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = cpu_copy_of_easyedit(args.easyedit, Path(tmp))
        for side in args.order.split(","):
            if side == "easyedit":
                torch.manual_seed(args.seed)  # EasyEdit samples its context prefixes from the global generator
                out["runs"]["easyedit"] = score(loaded, easyedit_editor(loaded, root, ours), requests)
            else:
                for k in args.prefixes.split(","):
                    editor = build_editor("memit", loaded, {"context_prefixes": int(k), "seed": args.seed})
                    out["runs"][f"ours_{k}_prefixes"] = score(loaded, editor, requests)
            print(out["runs"], file=sys.stderr)
    out["load_1min_after"] = round(os.getloadavg()[0], 2)
    return emit(out, args.output)


if __name__ == "__main__":
    sys.exit(main())

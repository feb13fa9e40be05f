"""The EasyEdit layer and the request lists of the Python API (issue 22, finding 16): shapes, YAML errors, lists of
unequal length and non-text values, each a ``ConfigError``/``RequestError`` naming the field."""
from __future__ import annotations

import warnings
from pathlib import Path

from .common import Case, write


def _hparams(cls_name: str, raw: dict):
    def call():
        from lightning_edit import easyedit

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return getattr(easyedit, cls_name).from_easyedit_dict(raw)
    return call


def _from_file(path: str):
    def call():
        from lightning_edit.easyedit import ROMEHyperParams

        return ROMEHyperParams.from_hparams(path)
    return call


def _lists(**kwargs):
    def call():
        from lightning_edit.requests import requests_from_lists

        return requests_from_lists(prompts=["The capital of France is"], **kwargs)
    return call


def _record(record: dict):
    def call():
        from lightning_edit.requests import EditRequest

        return EditRequest.from_dict(record)
    return call


def cases(folder: Path) -> list[Case]:
    f = lambda name, content: write(folder, name, content)  # noqa: E731
    table = [
        ("WISE act_margin is a number (TypeError before)", _hparams("WISEHyperParams", {"act_margin": 5.0}), "act_margin"),
        ("WISE act_margin has two of three values (cut silently before)",
         _hparams("WISEHyperParams", {"act_margin": [5.0, 20.0]}), "act_margin"),
        ("FT objective_optimization is a list (TypeError before)",
         _hparams("FTHyperParams", {"objective_optimization": ["target_new"]}), "objective_optimization"),
        ("ROME layers is a number", _hparams("ROMEHyperParams", {"layers": 5}), "layers"),
        ("hyperparameters keyed by numbers", _hparams("ROMEHyperParams", {1: 2}), "mapping"),
        ("hyperparameter YAML does not parse (yaml.ScannerError before)",
         _from_file(f("bad.yaml", "alg_name: ROME\nlayers: [5\n")), "bad.yaml"),
        ("hyperparameter YAML is not UTF-8", _from_file(f("latin.yaml", b"model_name: \xff\xfe\n")), "UTF-8"),
        ("target_new is a number (TypeError before)", _lists(target_new=5), "target_new"),
        ("ground_truth is a number", _lists(target_new=["x"], ground_truth=3), "ground_truth"),
        ("three locality prompts, two answers (cut to two before)",
         _lists(target_new=["x"], locality_inputs={"n": {"prompt": [["a", "b", "c"]], "ground_truth": [["1", "2"]]}}),
         "locality_inputs"),
        ("a locality answer is a number (turned into '3' before)",
         _lists(target_new=["x"], locality_inputs={"n": {"prompt": ["a"], "ground_truth": [3]}}), "ground_truth"),
        ("a portability prompt is a number",
         _lists(target_new=["x"], portability_inputs={"p": {"prompt": [4], "ground_truth": ["a"]}}), "prompt"),
        ("a rephrase is a number", _lists(target_new=["x"], rephrase_prompts=[7]), "rephrase_prompts"),
        ("locality_inputs is a list", _lists(target_new=["x"], locality_inputs=["n"]), "locality_inputs"),
        ("a record without prompt (KeyError before)", _record({"target_new": "x"}), "prompt"),
        ("a probe kind that is a list", _record({"prompt": "a", "target_new": "b",
                                                 "locality": [{"prompt": "c", "answer": "d", "kind": [1]}]}), "kind"),
    ]
    return [Case(what=f"easyedit: {what}", door="api", call=call, name=name) for what, call, name in table]

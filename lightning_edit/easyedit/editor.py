"""EasyEdit's ``BaseEditor``: ``edit`` and ``batch_edit`` with EasyEdit's arguments and its metric structure.

Built on ``lightning_edit.api.BaseEditor`` (model loading, device and dtype rules) and ``evaluate_editing`` (the
protocols and metrics): only the argument names and the shape of what comes back are EasyEdit's.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from .. import api
from ..editors import HyperParams
from ..editors.delta import undo_all
from ..errors import ConfigError
from ..evaluation import Report
from ..models import LoadedModel
from ..requests import EditRequest, requests_from_lists
from ..runner import Run, RunSpec, editor_for
from .datasets import EasyEditDataset
from .hparams import EasyEditHParams, check_against_model, resolve_easyedit_model_name
from .summary import summary_metrics

log = logging.getLogger(__name__)

# EasyEdit's eval_metric values it scores by teacher-forced token accuracy (run_wise_editing.py passes 'token em');
# its perplexity metrics are refused.
SAME_EVAL_METRICS = ("exact match", "token_em", "token em")
REFUSED_EVAL_METRICS = {"ppl": "perplexity of target_new",
                        "ood_ppl": "WISE's thresholded out-of-distribution perplexity"}
FLUENCY_TOKENS = 100  # EasyEdit's test_generation_quality: 100 new tokens


class WeightsCopy(dict):
    """EasyEdit's third return value, both ways it comes: a dict of parameter name → weights before the kept edits
    (write them back to restore, as EasyEdit scripts do), and, called, an undo of the kept edits, modules and
    memories included (as EasyEdit's GRACE/WISE ``weights_copy()``). Empty when no edit was kept."""

    def __init__(self, deltas: Sequence, loaded: LoadedModel):
        super().__init__()
        for delta in deltas:  # the earliest edit's "before" is the original weight
            for name, before in delta.weights_before.items():
                self.setdefault(name, before)
        self._deltas, self._loaded = list(deltas), loaded

    def __call__(self) -> None:
        undo_all(self._deltas, self._loaded)
        self._deltas = []


class BaseEditor(api.BaseEditor):
    """``BaseEditor.from_hparams(hparams)`` then ``edit(...)`` → ``(metrics, edited_model, weights_copy)``."""

    def __init__(self, editor, loaded: LoadedModel, hparams: Optional[HyperParams] = None, run: Optional[Run] = None):
        super().__init__(editor, loaded, run)
        self.hparams = hparams if hparams is not None else editor.hparams
        self.last_report: Optional[Report] = None  # the full lightning-edit report of the last edit/batch_edit

    # EasyEdit scripts read these
    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tok(self):
        return self.loaded.tokenizer

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def alg_name(self) -> str:
        return getattr(self.hparams, "alg_name", self.editor.name)

    @classmethod
    def from_hparams(cls, hparams: HyperParams, loaded: Optional[LoadedModel] = None, *,
                     device: Union[int, str, torch.device, None] = None,
                     dtype: Union[str, torch.dtype, None] = None) -> "BaseEditor":
        """The editor of EasyEdit-style ``hparams`` (``ROMEHyperParams.from_hparams(...)``) or of our own, on
        ``loaded`` or on ``hparams.model_name`` loaded on ``hparams.device`` (``device: 0`` without a GPU: the CPU,
        with a warning). The file's module templates and ``v_loss_layer`` are checked against the model."""
        if not isinstance(hparams, EasyEditHParams):
            base = api.BaseEditor.from_hparams(hparams, loaded, device=device, dtype=dtype)
            return cls(base.editor, base.loaded, run=base.run)
        native = hparams.native()  # validated now, after whatever the script changed
        if loaded is None:
            if not hparams.model_name:
                raise ConfigError("hyperparameter 'model_name' is empty; set it (e.g. model_name: smollm2-135m) or pass loaded=")
            name, _ = resolve_easyedit_model_name(hparams.model_name)  # again: a script may have set it
            target = api._device_for(device if device is not None else hparams.device)
            run = Run(RunSpec(model=name, method=hparams.method(), device=target, hparams=native,
                              dtype=api._dtype_for(dtype, hparams.fp16, target),
                              model_flag="hyperparameter 'model_name'"))  # the shared preflight, then the load
        elif device is not None or dtype is not None:
            raise ConfigError("from_hparams: device= and dtype= say how to load the model, but a loaded model was given")
        else:
            run = Run(RunSpec(model=loaded.name, method=hparams.method(), device=str(loaded.device), hparams=native),
                      loaded=loaded)
        check_against_model(hparams, run.load())
        return cls(run.editor(), run.load(), hparams, run)

    def edit(self, prompts: Union[str, Sequence[str]], target_new: Union[str, Sequence[str]],
             ground_truth: Union[str, Sequence[str], None] = None, rephrase_prompts: Union[str, Sequence[Any], None] = None,
             locality_inputs: Optional[dict] = None, portability_inputs: Optional[dict] = None,
             sequential_edit: bool = False, verbose: bool = True, **kwargs: Any):
        """EasyEdit's ``edit``. Each request is scored before and after its edit. ``sequential_edit``: all edits
        applied one after another, kept in the returned model and scored after the last (restore with the returned
        ``weights_copy``); otherwise each is undone after scoring, as in EasyEdit, so the returned model is unedited.
        Keyword arguments, with EasyEdit's meaning: ``subject``; ``keep_original_weight`` (changes nothing: EasyEdit's
        ``edit`` no longer reads it, ``sequential_edit`` alone decides); ``test_generation`` (adds ``fluency``);
        ``eval_metric`` ('exact match', 'token_em', 'token em': teacher-forced token accuracy; 'ppl' refused);
        ``train_ds`` (IKE's demonstration pool; ignored by the other methods); ``pre_edit``/``pre_file`` (pre-edit
        metrics read from / written to an EasyEdit pre-edit file); ``loc_prompts`` (WISE's unrelated prompts: noted,
        WISE here draws them from its ``memory_pool``)."""
        requests, options = self._requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
                                           portability_inputs, sequential_edit, kwargs)
        report = self.run.evaluate(requests, self.editor, protocol="sequential" if sequential_edit else "single",
                                   fluency=options["test_generation"], fluency_tokens=FLUENCY_TOKENS, progress=verbose,
                                   keep_edits=sequential_edit)
        return self._returned(requests, report, options, verbose)

    def batch_edit(self, prompts: Sequence[str], target_new: Sequence[str], ground_truth: Optional[Sequence[str]] = None,
                   rephrase_prompts: Optional[Sequence[Any]] = None, locality_inputs: Optional[dict] = None,
                   portability_inputs: Optional[dict] = None, keep_original_weight: bool = False, verbose: bool = True,
                   sequential_edit: bool = False, **kwargs: Any):
        """EasyEdit's ``batch_edit``: ``hparams.batch_size`` requests per edit call (all of them when unset; a
        ``batch_size=`` argument wins). Each batch is scored then undone; with ``sequential_edit`` the batches are
        kept, one after another, and all requests scored after the last."""
        batch_size = kwargs.pop("batch_size", None) or getattr(self.hparams, "batch_size", None)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a whole number >= 1 (requests per edit call), got {batch_size!r}")
        kwargs["keep_original_weight"] = keep_original_weight
        requests, options = self._requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
                                           portability_inputs, sequential_edit, kwargs)
        report = self.run.evaluate(requests, self.editor, protocol="sequential" if sequential_edit else "batch",
                                   batch_size=batch_size or len(requests), fluency=options["test_generation"],
                                   fluency_tokens=FLUENCY_TOKENS, progress=verbose, keep_edits=sequential_edit)
        return self._returned(requests, report, options, verbose)

    # ---- shared parts ------------------------------------------------------------------------------------------
    def _requests(self, prompts, target_new, ground_truth, rephrase_prompts, locality_inputs, portability_inputs,
                  sequential_edit: bool, kwargs: dict) -> tuple[list[EditRequest], dict]:
        """Requests from EasyEdit's arguments, and the options; unknown or unsupported keywords are refused."""
        subject = kwargs.pop("subject", None)
        options = _options(kwargs, sequential_edit)
        for name, value in (("locality_inputs", locality_inputs), ("portability_inputs", portability_inputs)):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{name} must be a dict such as {{'neighborhood': {{'prompt': [...], 'ground_truth': "
                                  f"[...]}}}}, one entry per edit prompt; got a {type(value).__name__}")
        if isinstance(ground_truth, str):
            ground_truth = [ground_truth]
        requests = requests_from_lists(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs,
                                       portability_inputs)
        _check_per_request(options, len(requests))
        self.run.check(requests)  # control-token text, context length: as edit.py checks them
        self._use_train_ds(options["train_ds"])
        return requests, options

    def _use_train_ds(self, train_ds: Any) -> None:
        """IKE's demonstrations come from ``train_ds`` (EasyEdit: IKE only; the other methods ignore it)."""
        if self.editor.name != "ike":
            return
        if train_ds is None:
            return  # the pool of the hyperparameters (train_data), as encode_ike_facts left it
        if not isinstance(train_ds, EasyEditDataset):
            raise ConfigError(f"train_ds must be a ZsreDataset, CounterFactDataset or KnowEditDataset (IKE's "
                              f"demonstration pool), got a {type(train_ds).__name__}")
        hparams = self.editor.hparams
        if list(hparams.train_data) != [str(train_ds.path)] or hparams.pool_size != train_ds.size:
            self.editor = editor_for(dataclasses.replace(hparams, train_data=[str(train_ds.path)],
                                                         pool_size=train_ds.size), "ike")

    def _returned(self, requests: list[EditRequest], report: Report, options: dict, verbose: bool):
        self.last_report = report
        metrics = [easyedit_metrics(r, row, report) for r, row in zip(requests, report.requests)]
        if options["pre_edit"] is not None:  # EasyEdit: pre-edit metrics read back from an earlier run's pre_file
            for m, given in zip(metrics, options["pre_edit"]):
                m["pre"] = given["pre"]
        elif options["pre_file"] is not None:
            Path(options["pre_file"]).write_text(json.dumps([{"pre": m["pre"]} for m in metrics], indent=4),
                                                 encoding="utf-8")
        if verbose:
            summary_metrics(metrics)
        return metrics, self.loaded.model, WeightsCopy(report.kept_deltas, self.loaded)


def _options(kwargs: dict, sequential_edit: bool) -> dict:
    """EasyEdit's keyword arguments of ``edit``, checked; what is left in ``kwargs`` is refused."""
    if not isinstance(sequential_edit, bool):
        raise ConfigError(f"sequential_edit must be True or False, got {sequential_edit!r}")
    keep_original = kwargs.pop("keep_original_weight", False)
    if not isinstance(keep_original, bool):
        raise ConfigError(f"keep_original_weight must be True or False, got {keep_original!r}")
    # keep_original_weight changes nothing, as in EasyEdit's edit(): sequential_edit alone says whether edits are kept
    eval_metric = kwargs.pop("eval_metric", "exact match")
    if eval_metric in REFUSED_EVAL_METRICS:
        raise ConfigError(f"eval_metric={eval_metric!r} ({REFUSED_EVAL_METRICS[eval_metric]}) is not computed here; "
                          f"use one of {SAME_EVAL_METRICS} (teacher-forced token accuracy, EasyEdit's default)")
    if eval_metric not in SAME_EVAL_METRICS:
        raise ConfigError(f"eval_metric={eval_metric!r} is not one of EasyEdit's metrics measured here; use one of "
                          f"{SAME_EVAL_METRICS} (teacher-forced token accuracy, EasyEdit's default)")
    options = {"test_generation": bool(kwargs.pop("test_generation", False)), "train_ds": kwargs.pop("train_ds", None),
               "pre_edit": kwargs.pop("pre_edit", None), "pre_file": kwargs.pop("pre_file", None),
               "loc_prompts": kwargs.pop("loc_prompts", None)}
    if kwargs:
        raise ConfigError(f"edit() got argument(s) {sorted(kwargs)} that lightning-edit's EasyEdit layer does not "
                          "support; supported besides EasyEdit's named ones: subject, keep_original_weight, "
                          "test_generation, eval_metric, train_ds, pre_edit, pre_file, loc_prompts")
    return options


def _check_per_request(options: dict, n: int) -> None:
    """``pre_edit``: one ``{"pre": ...}`` per request; ``loc_prompts``: strings (WISE's unrelated prompts)."""
    pre_edit = options["pre_edit"]
    if pre_edit is not None and (not isinstance(pre_edit, list) or len(pre_edit) != n
                                 or not all(isinstance(m, dict) and isinstance(m.get("pre"), dict) for m in pre_edit)):
        raise ConfigError(f"pre_edit must be a list of {n} dicts with a 'pre' entry each (what pre_file= wrote for "
                          "these requests); delete the stale pre-edit file or pass pre_edit=None")
    pre_file = options["pre_file"]
    if pre_file is not None and (not isinstance(pre_file, (str, Path)) or not Path(pre_file).parent.is_dir()):
        raise ConfigError(f"pre_file must be a path in an existing folder (where the pre-edit metrics are written), "
                          f"got {pre_file!r}")
    loc = options["loc_prompts"]
    if isinstance(loc, str):
        loc = options["loc_prompts"] = [loc]
    if loc is not None and (not isinstance(loc, list) or not all(isinstance(p, str) for p in loc)):
        raise ConfigError(f"loc_prompts must be a list of strings (unrelated text), got {type(loc).__name__}")
    if loc:
        log.info("loc_prompts: %d unrelated prompts given; WISE here draws its unrelated prompts from its memory_pool "
                 "(zsre-train among them), not from this list", len(loc))


def easyedit_metrics(request: EditRequest, row: dict, report: Report) -> dict:
    """One request's metrics in EasyEdit's structure, with our protocol tags and our own metrics beside them."""
    def side(values: dict, post: bool) -> dict:
        out: dict = {"rewrite_acc": [values["reliability"]]}
        if "generalization" in values:
            out["rephrase_acc"] = [values["generalization"]]
        if post or not request.locality:  # EasyEdit drops 'locality' from 'pre' once it is compared into 'post'
            out["locality"] = {f"{k.split('/', 1)[1]}_acc": [v] for k, v in values.items() if k.startswith("locality/")}
        out["portability"] = {f"{k.split('/', 1)[1]}_acc": [v] for k, v in values.items() if k.startswith("portability/")}
        if "fluency" in values:
            out["fluency"] = {"ngram_entropy": values["fluency"]}
        return out

    return {
        "case_id": row["case_id"], "requested_rewrite": _requested_rewrite(request), "time": row.get("edit_seconds"),
        "pre": side(row["pre"], post=False), "post": side(row["post"], post=True),
        "protocol": report.protocol, "scored": report.config["scored"],
        "lightning_edit": {"pre": row["pre"], "post": row["post"]},  # our metrics (efficacy, exact match, ...)
    }


def _requested_rewrite(r: EditRequest) -> dict:
    def by_kind(probes) -> dict:
        out: dict = {}
        for p in probes:
            entry = out.setdefault(p.kind or "", {"prompt": [], "ground_truth": []})
            entry["prompt"].append(p.prompt)
            entry["ground_truth"].append(p.answer)
        return out

    return {"prompt": r.prompt, "target_new": r.target_new, "ground_truth": r.target_true, "subject": r.subject,
            "rephrase_prompt": list(r.rephrase_prompts), "locality": by_kind(r.locality), "portability": by_kind(r.portability)}

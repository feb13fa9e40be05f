"""EasyEdit-shaped Python API, so that porting an EasyEdit script is a matter of imports::

    from lightning_edit.api import BaseEditor
    from lightning_edit.editors.ft import FTMHyperParams

    hparams = FTMHyperParams.from_hparams("configs/ft-m/default.yaml", model_name="smollm2-135m")
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, deltas = editor.edit(
        prompts=["The mother tongue of Danielle Darrieux is"], target_new=["English"], ground_truth=["French"],
        subject=["Danielle Darrieux"], rephrase_prompts=["Danielle Darrieux grew up speaking"],
        locality_inputs={"neighborhood": {"prompt": ["The capital of Italy is"], "ground_truth": ["Rome"]}},
        sequential_edit=True)
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import torch

from .editors import Editor, HyperParams
from .errors import ConfigError
from .models import LoadedModel, load_model  # noqa: F401  (load_model: part of this API, as in EasyEdit scripts)
from .models.loading import resolve_dtype
from .requests import requests_from_lists
from .runner import Run, RunSpec, editor_for as editor_for_hparams  # noqa: F401  (the name this module had)


def _device_for(device: Union[int, str, torch.device, None]) -> torch.device:
    """EasyEdit's ``device`` (a GPU number) or a device name; a GPU asked for where torch sees none falls back to
    the CPU with a warning (as an EasyEdit script written for a GPU machine would want on a laptop)."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, bool):
        raise ConfigError(f"device must be a GPU number, a device name or a torch.device, got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ConfigError(f"device {device} is not a GPU number (0, 1, ...)")
        device = f"cuda:{device}"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a device; use a GPU number, 'cpu', 'cuda' or 'cuda:N'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {device} asked for, but this torch ({torch.__version__}) sees no CUDA GPU: using the CPU",
                      RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    return device


def _dtype_for(dtype: Union[str, torch.dtype, None], fp16: Optional[bool], device: torch.device) -> torch.dtype:
    """``dtype`` if given; else EasyEdit's ``fp16``: float16 on a GPU, bfloat16 on a CPU (float16 matrix products
    are slow there and some have no CPU kernel), said in a warning; else float32."""
    if dtype is not None:
        return resolve_dtype(dtype, flag="dtype")
    if fp16:
        if device.type == "cpu":
            warnings.warn("fp16: True on a CPU: loading the model in bfloat16 instead of float16 (same memory; float16 "
                          "matrix products are slow on a CPU and some operations have no float16 CPU kernel). Pass "
                          "dtype='float16' to insist", RuntimeWarning, stacklevel=3)
            return torch.bfloat16
        return torch.float16
    return torch.float32


class BaseEditor:
    """Holds a model and an editor; ``edit`` applies requests and returns (metrics, model, deltas)."""

    def __init__(self, editor: Editor, loaded: LoadedModel, run: Optional[Run] = None):
        self.editor = editor
        self.loaded = loaded
        self.run = run or Run(RunSpec(model=loaded.name, device=str(loaded.device), hparams=editor.hparams), loaded=loaded)

    @classmethod
    def from_hparams(cls, hparams: HyperParams, loaded: Optional[LoadedModel] = None, *,
                     device: Union[int, str, torch.device, None] = None,
                     dtype: Union[str, torch.dtype, None] = None) -> "BaseEditor":
        """The editor of ``hparams`` on ``loaded``, or on ``hparams.model_name`` loaded here.

        Where the model is loaded: ``device`` (a GPU number as in EasyEdit, "cpu", "cuda:N"; default: the
        hyperparameters' own ``device`` field where they have one, else the CPU; a GPU where there is none falls
        back to the CPU with a warning) and ``dtype`` ("float32", "bfloat16", "float16" or a torch dtype; default:
        EasyEdit's ``fp16`` field where the hyperparameters have one, float16 on a GPU and bfloat16 on a CPU, else
        float32)."""
        if loaded is None:
            if not hparams.model_name:
                raise ConfigError("hyperparameter 'model_name' is empty; set it (e.g. model_name: smollm2-135m) or pass loaded=")
            target = _device_for(device if device is not None else getattr(hparams, "device", None))
            chosen = _dtype_for(dtype, getattr(hparams, "fp16", None), target)
            run = Run(RunSpec(model=hparams.model_name, device=target, dtype=chosen, hparams=hparams,
                              model_flag="hyperparameter 'model_name'"))  # the shared preflight, then the load
        elif device is not None or dtype is not None:
            raise ConfigError("from_hparams: device= and dtype= say how to load the model, but a loaded model was given; "
                              "load it with load_model(name, device=..., dtype=...) instead")
        else:
            run = Run(RunSpec(model=loaded.name, device=str(loaded.device), hparams=hparams), loaded=loaded)
        return cls(run.editor(), run.load(), run)

    def edit(
        self,
        prompts: Sequence[str] | str,
        target_new: Sequence[str] | str,
        ground_truth: Sequence[str] | str | None = None,
        subject: Sequence[str] | str | None = None,
        rephrase_prompts: Sequence[Any] | str | None = None,
        locality_inputs: Optional[dict] = None,
        portability_inputs: Optional[dict] = None,
        sequential_edit: bool = False,
        verbose: bool = False,
        fluency: bool = False,
    ):
        """EasyEdit's ``edit``: each request scored pre and post. With ``sequential_edit`` the edits stay in the
        returned model (undo them with ``[d.undo(editor.loaded) for d in reversed(deltas)]``); otherwise each is
        undone after scoring, as EasyEdit does."""
        requests = requests_from_lists(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs, portability_inputs)
        self.run.check(requests)
        report = self.run.evaluate(requests, self.editor, protocol="sequential" if sequential_edit else "single",
                                   fluency=fluency, progress=verbose, keep_edits=sequential_edit)
        return report.requests, self.loaded.model, report.kept_deltas

    def batch_edit(self, prompts, target_new, ground_truth=None, subject=None, rephrase_prompts=None,
                   locality_inputs=None, portability_inputs=None, batch_size: Optional[int] = None, verbose: bool = False,
                   sequential_edit: bool = False):
        """All requests in chunks of ``batch_size`` per edit call. Each chunk scored then undone; with
        ``sequential_edit`` the chunks are applied one after another, kept, and all scored after the last (undo
        them with the returned deltas, as for ``edit``)."""
        requests = requests_from_lists(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs, portability_inputs)
        self.run.check(requests)
        report = self.run.evaluate(requests, self.editor, protocol="sequential" if sequential_edit else "batch",
                                   batch_size=batch_size or len(requests), fluency=False, progress=verbose,
                                   keep_edits=sequential_edit)
        return report.requests, self.loaded.model, report.kept_deltas

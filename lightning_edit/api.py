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

from typing import Any, Optional, Sequence

from .editors import EDITORS, Editor, HyperParams
from .errors import ConfigError
from .evaluation import evaluate_editing
from .models import LoadedModel, load_model
from .requests import requests_from_lists


def editor_for_hparams(hparams: HyperParams) -> Editor:
    """The registered editor whose hyperparameter class is exactly ``type(hparams)``."""
    matches = [cls for cls in EDITORS.values() if cls.HParams is type(hparams)]
    if len(matches) != 1:
        raise ConfigError(f"no single editor takes {type(hparams).__name__}; use one of the methods' own HyperParams classes")
    return matches[0](hparams)


class BaseEditor:
    """Holds a model and an editor; ``edit`` applies requests and returns (metrics, model, deltas)."""

    def __init__(self, editor: Editor, loaded: LoadedModel):
        self.editor = editor
        self.loaded = loaded

    @classmethod
    def from_hparams(cls, hparams: HyperParams, loaded: Optional[LoadedModel] = None) -> "BaseEditor":
        if loaded is None:
            if not hparams.model_name:
                raise ConfigError("hyperparameter 'model_name' is empty; set it (e.g. model_name: smollm2-135m) or pass loaded=")
            loaded = load_model(hparams.model_name)
        return cls(editor_for_hparams(hparams), loaded)

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
        report = evaluate_editing(self.loaded, self.editor, requests, protocol="sequential" if sequential_edit else "single",
                                  fluency=fluency, progress=verbose, keep_edits=sequential_edit)
        return report.requests, self.loaded.model, report.kept_deltas

    def batch_edit(self, prompts, target_new, ground_truth=None, subject=None, rephrase_prompts=None,
                   locality_inputs=None, portability_inputs=None, batch_size: Optional[int] = None, verbose: bool = False):
        """All requests (in chunks of ``batch_size``) per edit call; scored, then undone."""
        requests = requests_from_lists(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs, portability_inputs)
        report = evaluate_editing(self.loaded, self.editor, requests, protocol="batch", batch_size=batch_size or len(requests),
                                  fluency=False, progress=verbose)
        return report.requests, self.loaded.model, report.kept_deltas

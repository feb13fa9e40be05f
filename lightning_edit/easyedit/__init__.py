"""An EasyEdit drop-in: EasyEdit's ``BaseEditor``, ``XXXHyperParams``, dataset classes and ``summary_metrics``
over lightning-edit, so an EasyEdit script runs with its import lines changed
(``easyeditor`` → ``lightning_edit.easyedit``)::

    from lightning_edit.easyedit import BaseEditor, ROMEHyperParams   # was: from easyeditor import ...

    hparams = ROMEHyperParams.from_hparams("lightning_edit/configs/easyedit/ROME/smollm2-135m.yaml")
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, weights_copy = editor.edit(prompts=..., ground_truth=..., target_new=..., subject=...)

``lightning_edit.easyedit.models.ike`` is ``easyeditor.models.ike`` (``encode_ike_facts``).
What is mapped, approximated or refused: docs/guides/easyedit.md (``errors.docs_link("guides/easyedit.md")``).
"""
from .datasets import CounterFactDataset, EasyEditDataset, KnowEditDataset, ZsreDataset
from .editor import BaseEditor, WeightsCopy, easyedit_metrics
from .hparams import (EASYEDIT_CLASSES, AlphaEditHyperParams, EasyEditHParams, EasyEditKeyWarning, EMMETHyperParams,
                      FTHyperParams, GraceHyperParams, IKEHyperParams, KEHyperParams, KNHyperParams, LoRAHyperParams,
                      MALMENHyperParams, MEMITHyperParams, MENDHyperParams, PMETHyperParams, R_ROMEHyperParams,
                      ROMEHyperParams, SERACHparams, UltraEditHyperParams, WISEHyperParams, check_against_model,
                      resolve_easyedit_model_name)
from .summary import summary_metrics

__all__ = ["BaseEditor", "WeightsCopy", "easyedit_metrics", "summary_metrics", "EASYEDIT_CLASSES", "EasyEditHParams",
           "EasyEditKeyWarning", "check_against_model", "resolve_easyedit_model_name",
           "EasyEditDataset", "ZsreDataset", "CounterFactDataset", "KnowEditDataset",
           # every class of EASYEDIT_CLASSES, under EasyEdit's name (tests/test_easyedit.py checks the two agree)
           "ROMEHyperParams", "R_ROMEHyperParams", "MEMITHyperParams", "EMMETHyperParams", "PMETHyperParams",
           "AlphaEditHyperParams", "FTHyperParams", "LoRAHyperParams", "KNHyperParams", "GraceHyperParams",
           "WISEHyperParams", "UltraEditHyperParams", "MENDHyperParams", "MALMENHyperParams", "SERACHparams", "KEHyperParams", "IKEHyperParams"]

"""An EasyEdit drop-in: EasyEdit's ``BaseEditor`` and ``XXXHyperParams`` names over lightning-edit, so an EasyEdit
script runs with its import line changed::

    from lightning_edit.easyedit import BaseEditor, ROMEHyperParams   # was: from easyeditor import ...

    hparams = ROMEHyperParams.from_hparams("lightning_edit/configs/easyedit/ROME/smollm2-135m.yaml")
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, weights_copy = editor.edit(prompts=..., ground_truth=..., target_new=..., subject=...)

See the README section "Coming from EasyEdit" for what is mapped, approximated or refused.
"""
from .editor import BaseEditor, WeightsCopy, easyedit_metrics
from .hparams import (EASYEDIT_CLASSES, AlphaEditHyperParams, EasyEditHParams, EasyEditKeyWarning, FTHyperParams,
                      GraceHyperParams, IKEHyperParams, KEHyperParams, KNHyperParams, MEMITHyperParams, MENDHyperParams,
                      ROMEHyperParams, SERACHparams, WISEHyperParams, UltraEditHyperParams, LoRAHyperParams,
                      check_against_model, resolve_easyedit_model_name)

__all__ = ["BaseEditor", "WeightsCopy", "easyedit_metrics", "EASYEDIT_CLASSES", "EasyEditHParams", "EasyEditKeyWarning",
           "ROMEHyperParams", "MEMITHyperParams", "AlphaEditHyperParams", "FTHyperParams", "KNHyperParams",
           "GraceHyperParams", "WISEHyperParams", "MENDHyperParams", "SERACHparams", "KEHyperParams", "IKEHyperParams",
           "UltraEditHyperParams", "LoRAHyperParams",
           "check_against_model", "resolve_easyedit_model_name"]

"""``LoadedModel``: a model ready to edit, with the registry of the patches edits hang on it. How a model comes to
be loaded (hub, GGUF, a saved directory) is in the loaders beside this module (``loading.py`` dispatches)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .layout import ModelLayout
from .patches import PatchRegistry
from .placement import input_device, real_state


@dataclass
class LoadedModel:
    """A model ready to edit: the module, its tokenizer, its layout and where it came from."""

    name: str
    model: nn.Module
    tokenizer: Any
    layout: ModelLayout
    # Everything an edit hangs on the model besides weights (memories, routers, prompt rewriters): one registry.
    patches: PatchRegistry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.patches = PatchRegistry(self)

    @property
    def device(self) -> torch.device:
        return input_device(self.model)  # a dispatched model's first parameter may live on disk

    @property
    def computes_from_weights_alone(self) -> bool:
        """Whether its outputs are those of its weights and the prompt as given: no forward hook on any module
        (patches, row weights, traces) and no patch rewriting prompts (an in-context editor's context)."""
        if self.patches.rewrites_prompts:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules())

    def weights_fingerprint(self, replace: Optional[dict[str, torch.Tensor]] = None) -> str:
        """A short hash of every parameter (ordered by name): ties caches and checkpoints to these exact weights.

        ``replace``: parameter name → tensor to hash in its place (an edit's ``weights_before`` gives the fingerprint
        of the model the edit was made on); a tied alias of a replaced parameter is replaced too."""
        digest = hashlib.sha256()
        by_storage = {}
        if replace:
            params = dict(self.model.named_parameters())
            # offloaded (meta) tensors share data_ptr 0: only real storage identifies a tied alias
            by_storage = {params[n].data_ptr(): t for n, t in replace.items() if n in params and params[n].data_ptr()}
        for name, param in sorted(real_state(self.model).items()):  # offloaded tensors (--device-map) read from their store
            digest.update(name.encode())
            t = replace[name] if replace and name in replace else by_storage.get(param.data_ptr(), param)
            t = t.detach().to("cpu").contiguous()
            # Sample a strided subset of large tensors: a full hash of 500 MB costs seconds for no gain.
            flat = t.reshape(-1)
            if flat.numel() > 65536:
                flat = flat[:: max(1, flat.numel() // 65536)]
            digest.update(flat.float().numpy().tobytes())
        return digest.hexdigest()[:16]

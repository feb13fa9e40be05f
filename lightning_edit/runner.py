"""One way in: the ``Run`` behind every front door (``edit.py`` and ``--multihop``, ``study``, ``ask``, ``trace``,
``api.BaseEditor``, ``easyedit.BaseEditor``).

A front door parses its arguments into a ``RunSpec`` and prints what comes back; the run itself does the rest,
in the same order everywhere:

1. ``Run(spec)``: the shared preflight (``lightning_edit/preflight.py``) — device, dtype, the model's source, the
   method and its hyperparameters merged **once** (``configs/<method>/`` ← ``--set`` ← the run's own settings:
   progress bars, cache folders, a trained editor), all before any model loads;
2. ``run.load()``: the model (or the one a caller already holds);
3. ``run.check(requests)``: what needs the tokenizer (control-token text, context length);
4. ``run.editor()``: the editor, built from the hyperparameters merged in 1 (merged again only when loading taught
   the model's family that its name could not: a hub id);
5. ``run.evaluate(requests, ...)`` / ``run.evaluate_multihop(cases, ...)``: the protocols of ``evaluation``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from . import models  # models.load_model looked up at call time (tests stand in for it)
from .editors import Editor, HyperParams, get_editor_class
from .models import LoadedModel
from .models.device_map import DEFAULT_DEVICE, Placement, placement_args
from .models.registry import family_of
from .preflight import check_environment, check_method, check_model_source, check_requests


@dataclass
class RunSpec:
    """What a front door asks for. ``method`` may be None for a run that only loads a model (``ask MODEL``,
    ``trace``); ``hparams`` is a ready HyperParams object (the Python API), used as it is instead of a merge."""

    model: str
    method: Optional[str] = None
    device: Any = DEFAULT_DEVICE  # a name or a torch.device
    dtype: Any = "float32"
    # spread the model with accelerate instead (--device-map auto|balanced|FILE, --max-memory, --offload-folder)
    device_map: Any = None
    max_memory: Any = None
    offload_folder: Optional[str] = None
    overrides: dict = field(default_factory=dict)
    editor: Optional[str] = None  # a trained editor (learnt methods): folder or hub id
    cache_dir: Optional[str] = None
    quiet: bool = False
    hparams: Optional[HyperParams] = None
    model_flag: str = "--model"

    @classmethod
    def from_args(cls, args: Any) -> "RunSpec":
        """The spec of a parsed command line with edit.py's names (--model, --method, --device, --dtype, --set,
        --editor, --cache-dir, --quiet); a command without one of them gets the default."""
        return cls(model=args.model, method=getattr(args, "method", None),
                   device=getattr(args, "device", DEFAULT_DEVICE),
                   dtype=getattr(args, "dtype", "float32"), overrides=dict(getattr(args, "overrides", None) or []),
                   editor=getattr(args, "editor", None), cache_dir=getattr(args, "cache_dir", None),
                   quiet=bool(getattr(args, "quiet", False)), **placement_args(args))


class Run:
    """One run: preflight on construction, then load, check, build the editor, evaluate."""

    def __init__(self, spec: RunSpec, loaded: Optional[LoadedModel] = None) -> None:
        self.spec = spec
        self.loaded = loaded
        self.hparams: Optional[HyperParams] = spec.hparams
        self._family = family_of(spec.model) if loaded is None else loaded.layout.family
        check_environment(spec.device, spec.dtype)
        if loaded is None:
            check_model_source(spec.model, flag=spec.model_flag)
            Placement.from_flags(spec.device_map, spec.max_memory, spec.offload_folder, device=spec.device)
        if spec.method is not None and self.hparams is None:
            self.hparams = self._merged(self._family)

    # ---- hyperparameters, merged once ---------------------------------------------------------------------
    def overrides(self) -> dict:
        """``--set`` values plus the run's own settings the method has fields for (progress bars, caches)."""
        fields = {f.name for f in dataclasses.fields(get_editor_class(self.spec.method).HParams)}
        out = dict(self.spec.overrides)
        if self.spec.quiet and "progress" in fields:
            out.setdefault("progress", False)
        for cache_field in ("stats_dir", "cache_dir"):  # statistics (ROME, MEMIT, AlphaEdit), IKE's pool embeddings
            if self.spec.cache_dir and cache_field in fields:
                out.setdefault(cache_field, self.spec.cache_dir)
        return out

    def _merged(self, family: Optional[str]) -> HyperParams:
        model = self.loaded.name if self.loaded is not None else self.spec.model
        _, hparams, _ = check_method(self.spec.method, model, self.overrides(), self.spec.editor, family=family)
        return hparams

    # ---- the model ----------------------------------------------------------------------------------------
    def load(self) -> LoadedModel:
        if self.loaded is None:
            spec = self.spec
            self.loaded = models.load_model(spec.model, cache_dir=spec.cache_dir, device=spec.device, dtype=spec.dtype,
                                            device_map=spec.device_map, max_memory=spec.max_memory,
                                            offload_folder=spec.offload_folder)
        return self.loaded

    def check(self, requests: Sequence[Any]) -> None:
        check_requests(requests, self.load())

    # ---- the editor ---------------------------------------------------------------------------------------
    def editor(self) -> Editor:
        """The editor of the merged hyperparameters; a hub id's family is known only once loaded, so its family
        file (``configs/<method>/<family>.yaml``) is merged then."""
        loaded = self.load()
        if self.spec.hparams is None and loaded.layout.family != self._family:
            self._family = loaded.layout.family
            self.hparams = self._merged(self._family)
        if self.hparams is None:
            raise ValueError("Run.editor() needs a method: RunSpec(method=...) or RunSpec(hparams=...)")
        return editor_for(self.hparams, self.spec.method)

    # ---- evaluating ---------------------------------------------------------------------------------------
    def evaluate(self, requests: Sequence[Any], editor: Optional[Editor] = None, **protocol: Any):
        """``evaluation.evaluate_editing`` of this run's model and editor (``protocol``: its keyword arguments)."""
        from .evaluation import evaluate_editing

        return evaluate_editing(self.load(), editor or self.editor(), list(requests), **protocol)

    def evaluate_multihop(self, cases: Sequence[Any], template: str, editor: Optional[Editor] = None, **options: Any):
        from .evaluation.multihop import evaluate_multihop

        return evaluate_multihop(self.load(), editor or self.editor(), list(cases), template, **options)


def editor_for(hparams: HyperParams, method: Optional[str] = None) -> Editor:
    """The registered editor of ``method``, or the one whose hyperparameter class is exactly ``type(hparams)``."""
    from .editors import EDITORS
    from .errors import ConfigError

    if method is not None:
        return get_editor_class(method)(hparams)
    matches = [cls for cls in EDITORS.values() if cls.HParams is type(hparams)]
    if len(matches) != 1:
        raise ConfigError(f"no single editor takes {type(hparams).__name__}; use one of the methods' own HyperParams classes")
    return matches[0](hparams)

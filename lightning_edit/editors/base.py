"""The one contract every editor implements.

An editor receives a loaded model and a list of requests and changes the model. ``Editor.edit`` wraps
the method's ``_apply``: it validates the requests, snapshots every parameter the method declares it
will touch, and on any exception or non-finite weight restores them bit for bit before re-raising
(``EditFailedError``). It returns an ``EditDelta`` that undoes, saves and re-applies the edit.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Optional, Sequence, Type, TypeVar

import torch

from ..config import checked_value as _checked_value  # one typed-value check for YAML files and --set
from ..errors import ConfigError, EditFailedError, LightningEditError, RequestError, docs_link
from ..models.loaded import LoadedModel
from ..models.patches import PatchChange
from ..models.placement import materialised, read_tensor
from ..paths import CONFIG_ROOT
from ..requests import EditRequest
from .delta import EditDelta, run_every_step  # noqa: F401  (EditDelta importable from here, as before)

log = logging.getLogger(__name__)
H = TypeVar("H", bound="HyperParams")


@dataclass
class HyperParams:
    """Base of every method's hyperparameters. Loaded from ``configs/<method>/`` YAML files."""

    model_name: Optional[str] = None
    seed: int = 0

    @classmethod
    def from_hparams(cls: Type[H], path: str | Path, **overrides: Any) -> H:
        """Read one YAML file (EasyEdit's ``XXXHyperParams.from_hparams``); keys must be fields."""
        from ..config import load_yaml  # a mapping, or a ConfigError naming the file (not YAML, not UTF-8, a list)

        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".yaml")
        values = load_yaml(path, what="hyperparameter file")
        values.update(overrides)
        return cls.from_dict(values, source=str(path))

    @classmethod
    def from_dict(cls: Type[H], values: dict, source: str = "<dict>") -> H:
        if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
            raise ConfigError(f"{source}: hyperparameters must be a mapping of field names (text) to values, got "
                              f"{type(values).__name__}{' with a key that is not text' if isinstance(values, dict) else ''}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k not in ("method", "alg_name")}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown hyperparameter(s) {unknown} for {cls.__name__}; known: {sorted(names)} "
                              f"(each explained: {docs_link('reference/hyperparameters.md')})")
        hints = typing.get_type_hints(cls)
        values = {k: _checked_value(k, v, hints[k], source) for k, v in values.items()}
        try:
            hp = cls(**values)
        except TypeError as err:
            raise ConfigError(f"{source}: {err}") from err
        hp.validate()
        return hp

    @classmethod
    def for_model(cls: Type[H], method: str, model_name: str, family: Optional[str] = None,
                  overrides: Optional[dict] = None, config_root: Path = CONFIG_ROOT) -> H:
        """Merge ``default.yaml``, ``<family>.yaml`` and ``<model>.yaml`` from ``configs/<method>/``, then overrides."""
        from ..config import layered_configs

        # a local path (a separator in it) is no stem: layered_configs skips it, as any family that could be a path
        merged = layered_configs(config_root / method, ("default", family, model_name))
        merged.update(overrides or {})
        merged["model_name"] = model_name
        return cls.from_dict(merged, source=f"configs/{method}/")

    def validate(self) -> None:
        """Check values; raise ConfigError naming the field. Subclasses extend."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def result_dict(self) -> dict:
        """``to_dict`` without the fields declared ``field(..., metadata={SPEED_ONLY: True})``: settings of how fast
        or in how much memory the same result is computed (a study keys its cached cells by this)."""
        return {f.name: v for f, v in zip(dataclasses.fields(self), self.to_dict().values()) if not f.metadata.get(SPEED_ONLY)}


SPEED_ONLY = "speed_only"  # dataclass field metadata: the field changes time and memory, not results


class Editor(ABC):
    """Base class of every editing method. Subclasses set ``name``, ``HParams`` and implement
    ``touched_parameters`` and ``_apply``; they never evaluate."""

    name: ClassVar[str]
    HParams: ClassVar[Type[HyperParams]] = HyperParams
    needs_subject: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = True  # False: a list of requests is applied one after another
    # True: what the edited model computes is changed through its weights only, so a plain transformers load of a
    # saved one answers as it does (bookkeeping patches, such as AlphaEdit's key memory, are saved beside it for
    # later edits). False: it adds patches (modules, memories, routers, prompts) that save_pretrained does not see; --save writes
    # them beside the weights (models/saving.py) and load_model(DIR) re-attaches them.
    edits_weights_only: ClassVar[bool] = True
    # Why this method's edited model cannot be saved (None: it can); --save is refused before any work with it.
    cannot_save: ClassVar[Optional[str]] = None
    # Bump when a change of this method's code changes what its edits do with the same hyperparameters: results
    # cached under the old version (a study's cells) are then computed again instead of being read back.
    results_version: ClassVar[int] = 1

    def __init__(self, hparams: HyperParams):
        if not isinstance(hparams, self.HParams):
            raise ConfigError(f"{self.name} needs {self.HParams.__name__}, got {type(hparams).__name__}")
        self.hparams = hparams

    # ---- what a method implements -------------------------------------------------------------
    def prepare(self, loaded: LoadedModel) -> None:
        """One-off work before the first edit (statistics, caches). Timed apart from edits."""

    @abstractmethod
    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        """Names of every parameter ``_apply`` may change (snapshotted for undo)."""

    def read_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        """Parameters ``_apply`` reads but never writes, beyond ``touched_parameters``: held on their modules for
        the edit when a ``--device-map`` offloads them (a weight copied into a side memory)."""
        return []

    @abstractmethod
    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        """Change the model in place for all ``requests``; return its entries in the model's patches, each made through
        ``loaded.patches.change`` (none for a method that only rewrites weights)."""

    # ---- the contract ---------------------------------------------------------------------------
    def validate(self, requests: Sequence[EditRequest]) -> list[EditRequest]:
        requests = list(requests)
        if not requests:
            raise RequestError("no edit requests given; pass at least one EditRequest")
        for r in requests:
            if not isinstance(r, EditRequest):
                raise RequestError(f"expected EditRequest objects, got {type(r).__name__}; build them with EditRequest(...) or requests_from_lists(...)")
            if self.needs_subject:
                r.require_subject(self.name)
        return requests

    def edit(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> EditDelta:
        """Apply ``requests`` (as one batch where the method supports it). Atomic: fails → weights unchanged.

        Every parameter the method did not declare (``touched_parameters``) is checksummed before and after, on
        success too: a method that writes where it should not is an ``EditFailedError``, never a silent change."""
        requests = self.validate(requests)
        params = dict(loaded.model.named_parameters())
        names = self.touched_parameters(loaded, requests)
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(f"{self.name}: parameters {unknown[:3]} do not exist in {loaded.name}; check the layer numbers in its config")
        # Weights a --device-map keeps off their module (CPU or disk offload) are real parameters for the edit and
        # written back to their store after it, even on error (models/placement.py).
        with materialised(loaded.model, list(names) + list(self.read_parameters(loaded, requests))):
            return self._edit_held(loaded, requests, names)

    def _edit_held(self, loaded: LoadedModel, requests: list[EditRequest], names: list[str]) -> EditDelta:
        """``edit`` once its parameters are held on their modules: snapshot, apply, check, roll back on failure."""
        params = dict(loaded.model.named_parameters())
        before = {n: params[n].detach().clone() for n in names}
        others = _checksums(loaded.model, [n for n in params if n not in before])
        grad_flags = {n: p.requires_grad for n, p in params.items()}  # a Trainer may be about to train this model
        patches: list[PatchChange] = []
        registered_before = set(loaded.patches.keys())
        start = time.perf_counter()
        try:
            if self.supports_batch:
                patches = list(self._apply(loaded, requests) or [])
            else:
                for r in requests:
                    patches.extend(self._apply(loaded, [r]) or [])
            bad = [n for n in names if not torch.isfinite(params[n]).all()]
            if bad:
                raise FloatingPointError(f"non-finite values in {bad[:3]} after the edit")
            undeclared = _changed(others, loaded.model)
            if undeclared:
                raise UndeclaredWriteError(undeclared)
        except BaseException as err:
            self._roll_back(loaded, params, before, patches, registered_before)
            failure = self._failure(err, _changed(others, loaded.model))
            if failure is err:
                raise
            raise failure from err
        finally:
            for n, p in params.items():
                p.requires_grad_(grad_flags[n])
        seconds = time.perf_counter() - start
        after = {n: params[n].detach().clone() for n in names}
        return EditDelta(method=self.name, model_name=loaded.name, requests=requests, weights_before=before,
                         weights_after=after, patches=patches, seconds=seconds)

    def _roll_back(self, loaded: LoadedModel, params: dict, before: dict, patches: list[PatchChange],
                   registered_before: set) -> None:
        """Restore the declared weights and detach every patch the failed edit added (all of them, even if one
        detach fails: ``run_every_step``)."""
        def restore() -> None:
            with torch.no_grad():
                for n, t in before.items():
                    params[n].copy_(t)

        steps = [("declared weights", restore)]
        steps += [(f"patch {p.key}", functools.partial(p.detach, loaded)) for p in reversed(patches)]
        # a method that failed after attaching a patch never returned it: what it added to the registry goes too
        added = [k for k in loaded.patches.keys() if k not in registered_before]
        steps += [(f"registry patch {k}", functools.partial(_detach_if_attached, loaded, k)) for k in reversed(added)]
        run_every_step(steps, f"roll-back of a failed {self.name} edit")

    def _failure(self, err: BaseException, changed: list[str]) -> BaseException:
        """What to raise for a failed edit, once its declared weights were restored. Only what the checksums show
        may be claimed: a method can write where it did not declare."""
        if changed and isinstance(err, KeyboardInterrupt):
            log.warning("%s: interrupted; %d parameter(s) it did not declare changed (%s): reload the model",
                        self.name, len(changed), changed[:3])
            return err
        if changed:
            return EditFailedError(
                f"{self.name} edit failed ({type(err).__name__}: {err}); its declared weights were restored, but "
                f"{len(changed)} parameter(s) it did not declare changed and could not be restored ({changed[:3]}): "
                f"reload the model before using it")
        if isinstance(err, (LightningEditError, KeyboardInterrupt)):
            return err
        return EditFailedError(f"{self.name} edit failed ({type(err).__name__}: {err}); the weights were restored "
                               "(every parameter checked)")

    def edit_sequential(self, loaded: LoadedModel, requests: Iterable[EditRequest]) -> list[EditDelta]:
        """Apply requests one after another, keeping each; undo them in reverse order."""
        return [self.edit(loaded, [r]) for r in requests]


class UndeclaredWriteError(RuntimeError):
    """An edit changed parameters its method did not declare (raised inside ``edit``, reported as EditFailedError)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"the edit changed {len(names)} parameter(s) it did not declare ({names[:3]})")


def _changed(checksums: dict[str, int], model: torch.nn.Module) -> list[str]:
    """The parameters whose checksum differs from ``checksums`` (taken before the edit)."""
    now = _checksums(model, list(checksums))
    return [n for n, value in checksums.items() if value != now[n]]


def _detach_if_attached(loaded: LoadedModel, key: str) -> None:
    if key in loaded.patches:
        loaded.patches.detach(key)


def _checksums(model: torch.nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Per parameter, the wrapping integer sum of its bits: one read pass, no copy, as fast as a float sum
    (a float64 sum costs ~9× more, on every edit). Any one changed value changes it, a NaN or a change below a
    float sum's rounding included; several changes cancelling exactly is all it could miss. An offloaded
    parameter (``--device-map``) is read from its store."""
    with torch.no_grad():
        return {n: _bit_sum(read_tensor(model, n).detach()) for n in names}


def _bit_sum(t: torch.Tensor) -> int:
    flat = t.contiguous().reshape(-1).view(torch.uint8)
    for dtype, width in ((torch.int32, 4), (torch.int16, 2)):
        if flat.numel() % width == 0:
            return int(flat.view(dtype).sum(dtype=dtype))  # wraps around: equality is all that is asked
    return int(flat.sum(dtype=torch.int64))


def add_update(weight: torch.Tensor, update: torch.Tensor) -> None:
    """``weight += update`` computed in float32 (float64 updates stay float64) and rounded once to the weight's
    dtype: adding a bfloat16-rounded update to a bfloat16 weight would round twice and lose small updates."""
    with torch.no_grad():
        update = update.to(weight.device)
        if weight.dtype in (torch.float32, torch.float64) and update.dtype == weight.dtype:
            weight.add_(update)
            return
        compute = torch.promote_types(update.dtype, torch.float32)
        weight.copy_((weight.to(compute) + update.to(compute)).to(weight.dtype))


EDITORS: dict[str, Type[Editor]] = {}


def register_editor(cls: Type[Editor]) -> Type[Editor]:
    if cls.name in EDITORS:
        raise ValueError(f"editor {cls.name!r} registered twice")
    EDITORS[cls.name] = cls
    return cls


def get_editor_class(method: str) -> Type[Editor]:
    if method not in EDITORS:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(sorted(EDITORS))}")
    return EDITORS[method]


def build_editor(method: str, loaded: LoadedModel, overrides: Optional[dict] = None) -> Editor:
    """The editor for ``method`` with hyperparameters for ``loaded`` from ``configs/<method>/``."""
    cls = get_editor_class(method)
    hp = cls.HParams.for_model(method, loaded.name, loaded.layout.family, overrides)
    return cls(hp)

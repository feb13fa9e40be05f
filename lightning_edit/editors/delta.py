"""``EditDelta``: the exact changes one edit made (tensors before and after, patches added), to undo, save and
re-apply it. A saved edit carries a manifest (``lightning_edit/manifest.py``) and every tensor is checked before the
first weight is written, so a re-applied edit is the saved one or nothing."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, EditFailedError, LightningEditError
from ..manifest import verify_manifest, write_manifest
from ..models.loaded import LoadedModel
from ..models.patches import PatchChange
from ..models.placement import read_tensor, write_tensor
from ..requests import EditRequest


@dataclass
class EditDelta:
    """The exact changes an edit made: tensors before and after, and its entries in the model's patches (one typed
    ``PatchChange`` each, made through ``loaded.patches``)."""

    method: str
    model_name: str
    requests: list[EditRequest]
    weights_before: dict[str, torch.Tensor] = field(default_factory=dict)
    weights_after: dict[str, torch.Tensor] = field(default_factory=dict)
    patches: list[PatchChange] = field(default_factory=list)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    # set once ``undo`` ran every step (even if it then raised): ``undo_all`` in a ``finally`` skips it
    undone: bool = field(default=False, compare=False, repr=False)

    @property
    def weight_deltas(self) -> dict[str, torch.Tensor]:
        return {k: self.weights_after[k] - self.weights_before[k] for k in self.weights_after}

    def edit_calls(self) -> list[tuple[float, list[EditRequest]]]:
        """The edit calls this edit holds, each as (seconds, requests): one here; a folded sequence holds several."""
        return [(self.seconds, list(self.requests))]

    def undo(self, loaded: LoadedModel) -> None:
        """Restore the model exactly as it was before this edit. Every step runs even when one fails or Ctrl-C
        arrives halfway (see ``run_every_step``): the weights are all written back and every patch detached before
        the failure or the interrupt is raised."""
        def restore(name: str, before: torch.Tensor) -> Callable[[], None]:
            def step() -> None:  # where the weight lives: its module, or an offload store (--device-map)
                write_tensor(loaded.model, name, before)
            return step

        steps = [(f"weight {name}", restore(name, before)) for name, before in self.weights_before.items()]
        steps += [(f"patch {p.key}", functools.partial(p.detach, loaded)) for p in reversed(self.patches)]
        try:
            run_every_step(steps, f"undo of a {self.method} edit")
        finally:
            self.undone = True

    def reapply(self, loaded: LoadedModel) -> None:
        """Apply this edit again to a model holding the pre-edit weights (refuses any other). Every tensor is checked
        (name, shape, dtype, finite, ``before`` equal to the model's) before the first weight is written."""
        params = dict(loaded.model.named_parameters())
        missing = [n for n in self.weights_after if n not in params]
        if missing or set(self.weights_after) != set(self.weights_before):
            raise CheckpointError(f"saved edit names parameters {(missing or sorted(set(self.weights_after) ^ set(self.weights_before)))[:3]} "
                                  f"that model {loaded.name!r} lacks or that have no before/after pair")
        for name, after in self.weights_after.items():
            param = params[name]
            for label, tensor in (("after", after), ("before", self.weights_before[name])):
                if tensor.shape != param.shape or tensor.dtype != param.dtype:
                    raise CheckpointError(f"saved edit: {label} of {name} is {tensor.dtype} {list(tensor.shape)}, the model's "
                                          f"parameter is {param.dtype} {list(param.shape)}; nothing was applied")
            if not bool(torch.isfinite(after).all()):
                raise CheckpointError(f"saved edit: {name} holds NaN or infinite values after the edit; nothing was applied")
            if not torch.equal(read_tensor(loaded.model, name).detach().cpu(), self.weights_before[name].cpu()):
                raise CheckpointError(
                    f"parameter {name} does not hold the weights this edit was made on; load the original "
                    f"{self.model_name!r} before re-applying"
                )
        fingerprint = self.info.get("base_fingerprint")
        if fingerprint and loaded.weights_fingerprint() != fingerprint:
            raise CheckpointError(f"model {loaded.name!r} is not the one this edit was made on (weights fingerprint "
                                  f"{loaded.weights_fingerprint()}, the edit records {fingerprint}); nothing was applied")
        try:
            for name, after in self.weights_after.items():
                write_tensor(loaded.model, name, after)
        except BaseException:  # all or nothing
            for name, before in self.weights_before.items():
                write_tensor(loaded.model, name, before)
            raise
        for patch in self.patches:
            patch.attach(loaded)
        self.undone = False

    def save(self, directory: str | Path, loaded: Optional[LoadedModel] = None) -> Path:
        """Write ``edit.safetensors`` (before/after of every touched tensor), ``edit.json`` (requests, method) and
        ``manifest.json`` (their SHA-256; with ``loaded``, the fingerprint of the weights the edit was made on)."""
        if self.patches:
            raise LightningEditError(f"{self.method}: this edit adds patches beside the weights; save the edited model with "
                                     "lightning_edit.models.saving.save_edited_model (edit.py --save) instead")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"after/{k}": v.detach().cpu().contiguous() for k, v in self.weights_after.items()}
        tensors.update({f"before/{k}": v.detach().cpu().contiguous() for k, v in self.weights_before.items()})
        save_file(tensors, str(directory / EDIT_TENSORS))
        info = dict(self.info)
        if loaded is not None:
            info["base_fingerprint"] = loaded.weights_fingerprint(replace=self.weights_before)
        requests = [r.to_dict() for r in self.requests]
        (directory / EDIT_RECORD).write_text(json.dumps({
            "method": self.method, "model": self.model_name, "seconds": self.seconds, "info": info, "requests": requests,
        }, indent=2, default=str))
        write_manifest(directory, [EDIT_TENSORS, EDIT_RECORD], EDIT_FORMAT, method=self.method, base_model=self.model_name,
                       base_fingerprint=info.get("base_fingerprint"), requests=requests,
                       tensors={k: [str(v.dtype).removeprefix("torch."), list(v.shape)] for k, v in tensors.items()})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "EditDelta":
        """Read a saved edit, its manifest verified (hashes) and its tensors checked (pairs, shapes, dtypes, finite)."""
        directory = Path(directory)
        verify_manifest(directory, EDIT_FORMAT, required=[EDIT_TENSORS, EDIT_RECORD])
        try:
            meta = json.loads((directory / EDIT_RECORD).read_text(encoding="utf-8"))
            tensors = load_file(str(directory / EDIT_TENSORS))
            requests = [EditRequest.from_dict(r) for r in meta["requests"]]
        except Exception as err:  # the hashes matched: a file that was never a valid saved edit
            raise CheckpointError(f"{directory}: not a readable saved edit ({type(err).__name__}: {err})") from err
        before = {k[len("before/"):]: v for k, v in tensors.items() if k.startswith("before/")}
        after = {k[len("after/"):]: v for k, v in tensors.items() if k.startswith("after/")}
        if set(before) != set(after) or len(before) + len(after) != len(tensors):
            raise CheckpointError(f"{directory / EDIT_TENSORS}: every tensor must be one 'before/NAME' and 'after/NAME' pair")
        for name in after:
            if after[name].shape != before[name].shape or after[name].dtype != before[name].dtype:
                raise CheckpointError(f"{directory}: {name} is {after[name].dtype} {list(after[name].shape)} after the edit, "
                                      f"{before[name].dtype} {list(before[name].shape)} before")
            if not (bool(torch.isfinite(after[name]).all()) and bool(torch.isfinite(before[name]).all())):
                raise CheckpointError(f"{directory}: {name} holds NaN or infinite values")
        return cls(method=meta["method"], model_name=meta["model"], requests=requests, weights_before=before,
                   weights_after=after, seconds=meta.get("seconds", 0.0), info=meta.get("info", {}))


def run_every_step(steps: Sequence[tuple[str, Callable[[], None]]], what: str) -> None:
    """Run each ``(label, step)`` whatever the others do: a failing step is recorded and the rest still run; a
    Ctrl-C during a step retries that step once (writing a tensor back or detaching a patch is safe to repeat) and is
    raised once every step ran. Then: the KeyboardInterrupt, or an ``EditFailedError`` naming each failed step."""
    failed: list[str] = []
    interrupted = False
    for label, step in steps:
        for attempt in range(2):
            try:
                step()
                break
            except KeyboardInterrupt:
                interrupted = True  # finish restoring first: a half-restored model is worse than a late stop
            except Exception as err:  # noqa: BLE001  (recorded and reported below, after the other steps)
                failed.append(f"{label} ({type(err).__name__}: {err})")
                break
        else:
            failed.append(f"{label} (interrupted twice)")
    if interrupted:
        raise KeyboardInterrupt(f"{what}: interrupted; every step ran" + (f", {len(failed)} failed" if failed else ""))
    if failed:
        raise EditFailedError(f"{what}: {len(failed)} step(s) failed, the others ran: {'; '.join(failed[:3])}; "
                              "reload the model before using it")


def undo_all(deltas: Sequence["EditDelta"], loaded: LoadedModel) -> None:
    """Undo ``deltas`` newest first, but those already undone; one that fails does not stop the others (all are
    attempted, then the failures are raised together). The caller's list is left alone."""
    pending = [(i, d) for i, d in enumerate(deltas) if not d.undone]
    run_every_step([(f"undo of edit {i}", functools.partial(d.undo, loaded)) for i, d in reversed(pending)],
                   f"undo of {len(pending)} edit(s)")


EDIT_TENSORS, EDIT_RECORD, EDIT_FORMAT = "edit.safetensors", "edit.json", "lightning-edit/edit-delta"

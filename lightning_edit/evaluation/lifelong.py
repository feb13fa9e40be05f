"""Long sequential runs: checkpoints every N edits, a bit-identical resume, and the two readings of a score.

A checkpoint is a folder ``<dir>/edits-NNNNNNN/`` written whole or not at all (``atomic.atomic_directory``):

- ``weights.safetensors``: every parameter an edit touched, as it is after the edits so far (the tensors
  themselves, not differences: a difference added back in floating point is not bit-exact);
- ``lightning_edit_patches/``: the model's patches (GRACE's codebook, WISE's memory, AlphaEdit's key sums,
  T-Patcher's neurons), in the ``--save`` format with its own manifest (``models/saving.py``);
- ``rng.safetensors``: torch's random state after the last finished edit;
- ``position.json``: how many edit calls are done, what the run is (model, weights fingerprint, method,
  hyperparameters, a digest of the records, batch size, ``eval_every``: a resume of anything else is refused,
  naming the field), each finished request's immediate scores and edit seconds, the curve so far, and Python's and
  NumPy's random states;
- ``manifest.json`` over every file (SHA-256), checked before a tensor is read.

Only the newest checkpoint is kept. The loop that writes and reads them is ``protocols.py``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_directory, atomic_save_figure, exclusive_lock
from ..editors.base import EditDelta, Editor
from ..editors.delta import run_every_step
from ..errors import CheckpointError, ConfigError
from ..manifest import verify_manifest, write_manifest
from ..models.loading import LoadedModel
from ..models.patches import PatchChange
from ..models.placement import write_tensor
from ..models.saving import PATCH_DIR, load_patches, save_patches
from ..requests import EditRequest
from ..tensor_limits import check_tensor_file

CHECKPOINT_FORMAT = "lightning-edit/sequential-checkpoint"
WEIGHTS_FILE, RNG_FILE, POSITION_FILE = "weights.safetensors", "rng.safetensors", "position.json"
PREFIX = "edits-"

# The two readings of a sequential score, written into every sequential report.
READINGS = {
    "retained": "every request scored after the last edit of the sequence (what WISE and GRACE report): did the "
                "edit survive the ones after it",
    "immediate": "each request (or batch) scored right after its own edit call, before the next one (what "
                 "AlphaEdit's code reports): did the edit take on the model as it was then",
    "locality": "both readings compare locality predictions with the unedited model's",
}


@dataclass
class Checkpointing:
    """Where and how often a sequential run writes its checkpoint, and whether it continues the newest one."""

    directory: Path
    every: int = 100
    resume: bool = False


@dataclass
class LoopPosition:
    """Where a sequential run stands: edit calls finished, the random states after the last of them, the curve."""

    calls_done: int = 0
    rng: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)
    capability: list = field(default_factory=list)  # [edits, scores] of a --capability-every curve so far
    # wall seconds per phase (edit, scoring, ...) of the processes before this one, up to the checkpoint they left;
    # None: a checkpoint written before they were recorded
    seconds: Optional[dict] = field(default_factory=dict)


def run_identity(loaded: LoadedModel, editor: Editor, requests: Sequence[EditRequest], batch_size: int,
                 eval_every: int) -> dict:
    """What a checkpoint must share with the run that resumes it."""
    records = json.dumps([r.to_dict() for r in requests], sort_keys=True, default=str).encode()
    return {"model": loaded.name, "weights_fingerprint": loaded.weights_fingerprint(), "method": editor.name,
            "hparams": json.loads(json.dumps(editor.hparams.result_dict(), default=str)),
            "records_sha256": hashlib.sha256(records).hexdigest(), "n": len(requests), "batch_size": batch_size,
            "eval_every": eval_every}


IDENTITY_FIXES = {
    "model": "--model", "weights_fingerprint": "--model (the same weights and --dtype)", "method": "--method",
    "hparams": "--set and configs/<method>/", "records_sha256": "--data, --offset and --n", "n": "--n",
    "batch_size": "--batch-size", "eval_every": "--eval-every",
    "capability": "--capability-every, --capability-tasks and --capability-limit",
}


@contextlib.contextmanager
def terminate_as_interrupt(enabled: bool = True) -> Iterator[None]:
    """While a checkpointed sequential run is under way, SIGTERM (a scheduler pre-empting the job, ``kill``, the
    end of a session) is handled as Ctrl-C: the state after the last finished edit call is written before the
    process exits. Ctrl-C itself does not reach a job started in the background by a script (the shell ignores
    SIGINT for it); SIGTERM does. The previous handler is back on exit, even on error; outside the main thread,
    where Python cannot set handlers, nothing changes."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def capture_rng() -> dict:
    """The random states an editor may draw from (torch's CPU generator, Python's, NumPy's)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": [version, list(state), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    version, state, gauss = rng["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The newest finished checkpoint under ``directory`` (temporary folders of an interrupted write are hidden)."""
    found = sorted(p for p in Path(directory).glob(f"{PREFIX}*") if p.is_dir() and p.name[len(PREFIX):].isdigit())
    return found[-1] if found else None


def check_checkpointing(checkpointing: Checkpointing, loaded: LoadedModel) -> None:
    """Before any work: a fresh run needs a folder without a checkpoint, a resume one with; the model must not carry
    patches of its own (a checkpoint's patches replace the model's)."""
    if checkpointing.every < 1:
        raise ConfigError(f"--checkpoint-every must be ≥ 1, got {checkpointing.every}")
    if len(loaded.patches):
        raise ConfigError(f"--checkpoint-dir: model {loaded.name!r} already carries patches {loaded.patches.keys()}; "
                          "checkpoint a run on a model without patches (the base model, not a --save folder of a "
                          "memory method)")
    check_checkpoint_folder(checkpointing)


def check_checkpoint_folder(checkpointing: Checkpointing) -> None:
    """A fresh run needs a folder without a checkpoint, a resume one with (``ConfigError`` naming the flag)."""
    if checkpointing.directory.exists() and not checkpointing.directory.is_dir():
        raise ConfigError(f"{'--resume' if checkpointing.resume else '--checkpoint-dir'} {checkpointing.directory} "
                          "is a file; give a folder")
    found = latest_checkpoint(checkpointing.directory)
    if checkpointing.resume and found is None:
        raise ConfigError(f"--resume {checkpointing.directory}: no checkpoint ({PREFIX}NNNNNNN/) in that folder; "
                          "run without --resume to start one")
    if not checkpointing.resume and found is not None:
        raise ConfigError(f"--checkpoint-dir {checkpointing.directory} already holds a checkpoint ({found.name}); "
                          f"add --resume {checkpointing.directory} to continue it, or give a new folder")


def write_checkpoint(checkpointing: Checkpointing, loaded: LoadedModel, applied: Sequence[EditDelta],
                     identity: dict, position: LoopPosition, rows: Sequence[dict], requests_done: int) -> Path:
    """Write the model's state after ``position.calls_done`` edit calls (``applied``: the edits in the model now),
    then remove the older checkpoints. Returns the new folder."""
    root = Path(checkpointing.directory)
    target = root / f"{PREFIX}{position.calls_done:07d}"
    params = dict(loaded.model.named_parameters())
    touched = sorted({name for delta in applied for name in delta.weights_after})
    with exclusive_lock(root / ".writing", f"checkpoint folder {root}", timeout=0), \
            atomic_directory(target, "--checkpoint-dir") as temp:
        save_file({n: params[n].detach().cpu().contiguous() for n in touched}, str(temp / WEIGHTS_FILE))
        save_file({"torch": position.rng["torch"]}, str(temp / RNG_FILE))
        save_patches(loaded, temp, method=identity["method"])
        state = {"identity": identity, "calls_done": position.calls_done, "requests_done": requests_done,
                 "rows": [_resumable_row(r) for r in rows[:requests_done]], "curve": position.curve,
                 "capability": position.capability, "seconds": position.seconds,
                 "python_rng": position.rng["python"], "numpy_rng": position.rng["numpy"]}
        (temp / POSITION_FILE).write_text(json.dumps(state, default=str))
        files = [p.relative_to(temp).as_posix() for p in sorted(temp.rglob("*")) if p.is_file()]
        write_manifest(temp, files, CHECKPOINT_FORMAT, method=identity["method"], base_model=identity["model"],
                       calls_done=position.calls_done)
    for older in root.glob(f"{PREFIX}*"):
        if older.is_dir() and older.name < target.name:
            shutil.rmtree(older, ignore_errors=True)
    return target


def _resumable_row(row: dict) -> dict:
    """What of a request's row the resumed run cannot compute again: its immediate scores and edit seconds."""
    return {k: row[k] for k in ("immediate", "edit_seconds") if k in row}


@dataclass
class Restored:
    """A checkpoint put back on the model: the edit that undoes it, where the loop stands, the rows so far."""

    delta: "SequenceEdits"
    position: LoopPosition
    rows: list[dict]
    requests_done: int


def verified_position(checkpointing: Checkpointing, identity: dict) -> tuple[Path, dict]:
    """The newest checkpoint's folder and position, after its manifest and the run it belongs to were checked
    (a ``CheckpointError`` naming the field that differs and the flag that sets it). Cheap: run before any work."""
    folder = latest_checkpoint(checkpointing.directory)
    if folder is None:
        raise CheckpointError(f"--resume {checkpointing.directory}: no checkpoint ({PREFIX}NNNNNNN/) in that folder")
    verify_manifest(folder, CHECKPOINT_FORMAT, required=[WEIGHTS_FILE, RNG_FILE, POSITION_FILE])
    try:
        state = json.loads((folder / POSITION_FILE).read_text(encoding="utf-8"))
        saved_identity = state["identity"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{folder / POSITION_FILE}: not a checkpoint position ({type(err).__name__})") from err
    for key, value in identity.items():
        if saved_identity.get(key) != value:
            raise CheckpointError(
                f"--resume {checkpointing.directory}: the checkpoint's {key} is {_short(saved_identity.get(key))}, this "
                f"run's is {_short(value)}; resume with the same {IDENTITY_FIXES[key]} as the interrupted run, or give "
                "a new --checkpoint-dir")
    return folder, state


def restore_checkpoint(checkpointing: Checkpointing, loaded: LoadedModel, identity: dict) -> Restored:
    """Verify the newest checkpoint (manifest, the run it belongs to, tensors) and put its weights and patches on
    ``loaded``, all before the first write or not at all; then its random states."""
    folder, state = verified_position(checkpointing, identity)
    weights = _checked_weights(folder, loaded)
    rng = load_file(str(folder / RNG_FILE))
    params = dict(loaded.model.named_parameters())
    before = {n: params[n].detach().clone() for n in weights}
    delta = SequenceEdits(method=identity["method"], model_name=loaded.name, requests=[], weights_before=before,
                          weights_after=weights, info={"checkpoint": str(folder)}, calls=state["calls_done"])
    with torch.no_grad():
        try:
            for name, tensor in weights.items():
                params[name].copy_(tensor)
            if (folder / PATCH_DIR).is_dir():
                delta.restored_patches = load_patches(loaded, folder)
        except BaseException:
            for name, tensor in before.items():
                params[name].copy_(tensor)
            raise
    restore_rng({"torch": rng["torch"], "python": state["python_rng"], "numpy": state["numpy_rng"]})
    position = LoopPosition(calls_done=state["calls_done"], curve=state["curve"],
                            capability=state.get("capability", []), seconds=state.get("seconds"))
    return Restored(delta, position, state["rows"], state["requests_done"])


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _checked_weights(folder: Path, loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, each a parameter of ``loaded`` with its shape and dtype, and finite."""
    check_tensor_file(folder / WEIGHTS_FILE, f"checkpoint {folder}", 1 << 16)
    weights = load_file(str(folder / WEIGHTS_FILE), device=str(loaded.device))
    params = dict(loaded.model.named_parameters())
    for name, tensor in weights.items():
        param = params.get(name)
        if param is None or param.shape != tensor.shape or param.dtype != tensor.dtype:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: {name} is {tensor.dtype} {list(tensor.shape)}, which model "
                                  f"{loaded.name!r} has no parameter to match; nothing was applied")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: {name} holds NaN or infinite values; nothing was applied")
    return weights


@dataclass
class SequenceEdits(EditDelta):
    """The edit calls of a sequential run folded into one edit as they finish: each touched tensor as it was before
    the first call (the base) and after the last, one change per memory (each call's change merged into the one
    before: WISE, GRACE, T-Patcher) or per entry (AlphaEdit's keys, SERAC's examples), and the patches a checkpoint
    put back. What it holds does not grow with the number of edits beyond what the methods keep by design (an
    entry, a neuron, a shard per edit), where a list of one ``EditDelta`` per call holds two copies of the touched
    tensors per call (AlphaEdit on smollm2: 35 MB a call, 35 GB after 1,000) and one memory change per call (WISE
    on smollm2: 3 MB a call). Undo writes the base back and takes the changes out, newest first, then the restored
    patches."""

    restored_patches: list = field(default_factory=list)
    calls: int = 0
    call_log: list = field(default_factory=list)  # (seconds, number of requests) of each call folded in this session

    def fold(self, delta: EditDelta, loaded: LoadedModel) -> None:
        """Add a finished edit call (its tensors are in ``loaded`` now). A change of a memory this sequence changed
        last is merged with that change (``PatchRegistry.merge``): the sequence is undone as a whole."""
        for name, before in delta.weights_before.items():
            self.weights_before.setdefault(name, before)
        self.weights_after.update(delta.weights_after)
        for change in delta.patches:
            self._add_change(change, loaded)
        self.requests.extend(delta.requests)
        self.seconds += delta.seconds
        self.calls += 1
        self.call_log.append((delta.seconds, len(delta.requests)))

    def _add_change(self, change: PatchChange, loaded: LoadedModel) -> None:
        for i in range(len(self.patches) - 1, -1, -1):
            if self.patches[i].container is change.container:
                merged = loaded.patches.merge(self.patches[i], change)
                if merged is not None:
                    self.patches[i] = merged  # kinds keep their order among themselves; other kinds are independent
                    return
                break
        self.patches.append(change)

    def edit_calls(self) -> list[tuple[float, list[EditRequest]]]:
        """Each call's (seconds, requests), as a list of one ``EditDelta`` per call would give them; the calls
        restored from a checkpoint come first, as one."""
        restored = len(self.requests) - sum(n for _, n in self.call_log)
        calls = [(max(self.seconds - sum(t for t, _ in self.call_log), 0.0), self.requests[:restored])] if restored else []
        start = restored
        for seconds, n in self.call_log:
            calls.append((seconds, self.requests[start:start + n]))
            start += n
        return calls

    def undo(self, loaded: LoadedModel) -> None:
        # written wherever each tensor lives (on its module, or offloaded by a device map), as EditDelta.undo does
        steps = [(f"weight {n}", functools.partial(write_tensor, loaded.model, n, t)) for n, t in self.weights_before.items()]
        steps += [(f"patch {c.key}", functools.partial(c.detach, loaded)) for c in reversed(self.patches)]
        steps += [(f"patch {p.key}", functools.partial(loaded.patches.detach, p)) for p in reversed(self.restored_patches)]
        try:
            run_every_step(steps, f"undo of {self.calls} sequential edit call(s)")
        finally:
            self.undone = True

    def reapply(self, loaded: LoadedModel) -> None:
        if self.restored_patches:
            raise CheckpointError("edits restored from a checkpoint are re-applied with --resume, not one by one")
        super().reapply(loaded)


def immediate_summary(rows: Sequence[dict], upto: Optional[int] = None) -> dict[str, float]:
    """The immediate reading: the mean over requests of each one's scores right after its own edit call (the same
    mean over requests as every summary)."""
    values: dict[str, list[float]] = {}
    for row in rows[:upto]:
        for key, value in row.get("immediate", {}).items():
            values.setdefault(key, []).append(value)
    return {k: round(sum(v) / len(v), 4) for k, v in values.items()}


CURVE_KEYS = ("reliability", "generalization", "locality", "portability")


def write_curve_figure(curve: Sequence[dict], path: Path, title: str, keys: Sequence[str] = CURVE_KEYS) -> Path:
    """Retained (solid) and immediate (dashed) scores (``keys``: by default reliability, generalization, locality
    and portability, where measured) against the number of edits, as a PNG written whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [point["edits"] for point in curve]
    for i, key in enumerate(k for k in keys if any(k in p["retained"] for p in curve)):
        color = plt.get_cmap("tab10").colors[i]
        for reading, style in (("retained", "-"), ("immediate", "--")):
            ys = [point[reading].get(key, float("nan")) for point in curve]
            ax.plot(xs, ys, linestyle=style, marker="o", markersize=3, color=color, label=f"{key} ({reading})")
    ax.set_xlabel("edits applied")
    ax.set_ylabel("score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_save_figure(fig, Path(path), dpi=120)
    plt.close(fig)
    return Path(path)

"""Checks shared by the tests of memory-patch editors (GRACE, T-Patcher, WISE)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from lightning_edit.editors.memory.memory import find_memory
from lightning_edit.models.loading import LoadedModel
from lightning_edit.models.teacher_forcing import build_target_batch, score_targets
from lightning_edit.requests import EditRequest


@torch.no_grad()
def logits_of(loaded: LoadedModel, prompts: Sequence[str], targets: Sequence[str]) -> torch.Tensor:
    batch = build_target_batch(loaded, list(prompts), list(targets))
    return loaded.model(**batch.model_inputs()).logits


def target_accuracy(loaded: LoadedModel, request: EditRequest) -> float:
    return score_targets(loaded, [request.prompt], [request.target_new])[0].token_accuracy


def check_real_model_edit_and_locality(loaded: LoadedModel, method: str) -> None:
    """Danielle Darrieux → English on the real model: the edit holds, a neighbour's prediction does not move,
    and undo restores the neighbour's logits exactly."""
    from conftest import require_data
    from lightning_edit.editors import build_editor

    require_data("counterfact/counterfact-train.json")  # half the memory pool comes from the training split
    request = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English")
    probe = ["Michel Rocard is a native speaker of"]
    before = logits_of(loaded, probe, ["French"])
    editor = build_editor(method, loaded, {"memory_pool": ["wikitext:40", "counterfact-train:40"]})
    delta = editor.edit(loaded, [request])
    try:
        assert target_accuracy(loaded, request) == 1.0
        after = logits_of(loaded, probe, ["French"])
        assert torch.equal(after.argmax(-1), before.argmax(-1))
    finally:
        delta.undo(loaded)
    assert torch.equal(logits_of(loaded, probe, ["French"]), before)


def hook_count(loaded: LoadedModel) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())


def run_sequential_checks(loaded: LoadedModel, editor, requests: Sequence[EditRequest], key: str,
                          size_of: Callable) -> None:
    """Edit one after another: the output on each edit prompt changes, the memory grows per edit, undoing in
    reverse shrinks it and finally restores the model bit for bit (no hook, no attribute), and re-applying
    the deltas gives back the edited model exactly."""
    prompts, targets = [r.prompt for r in requests], [r.target_new for r in requests]
    hooks_before = hook_count(loaded)
    weights_before = {n: p.clone() for n, p in loaded.model.state_dict().items()}
    before = logits_of(loaded, prompts, targets)
    deltas, sizes = [], []
    for r in requests:
        deltas.append(editor.edit(loaded, [r]))
        sizes.append(size_of(find_memory(loaded, key)))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0], f"the memory did not grow with the edits: {sizes}"
    edited = logits_of(loaded, prompts, targets)
    assert not torch.equal(edited, before), "the edits left the output on the edit prompts unchanged"
    for d in reversed(deltas[1:]):
        d.undo(loaded)
    assert size_of(find_memory(loaded, key)) == sizes[0]
    deltas[0].undo(loaded)
    assert len(loaded.patches) == 0
    assert hook_count(loaded) == hooks_before
    assert torch.equal(logits_of(loaded, prompts, targets), before), "detaching did not restore the model exactly"
    assert all(torch.equal(p, weights_before[n]) for n, p in loaded.model.state_dict().items())
    for d in deltas:
        d.reapply(loaded)
    assert torch.equal(logits_of(loaded, prompts, targets), edited), "re-applying the deltas did not give the same model"
    for d in reversed(deltas):
        d.undo(loaded)
    assert torch.equal(logits_of(loaded, prompts, targets), before)


def sequential_report(loaded: LoadedModel, method: str, data: str, n: int) -> dict:
    """The summary of the sequential protocol on ``n`` records of ``data`` (slow)."""
    from conftest import require_data

    from lightning_edit.data import DATASETS, load_requests
    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import evaluate_editing

    require_data(DATASETS[data])
    editor = build_editor(method, loaded)
    report = evaluate_editing(loaded, editor, load_requests(data, n=n), protocol="sequential", fluency=False, progress=False)
    assert len(loaded.patches) == 0  # evaluate_editing undid every edit
    return report.to_json()["summary"]

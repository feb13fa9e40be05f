"""WISE: side memory on tiny models of every family, exact detach, routing, sharding and merging, one real check."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor
from lightning_edit.editors.memory.memory import find_memory
from lightning_edit.editors.memory.wise import SideMemory, ties_merge
from lightning_edit.errors import ConfigError
from lightning_edit.requests import EditRequest

from patch_checks import check_real_model_edit_and_locality, logits_of, run_sequential_checks

EDIT = EditRequest(prompt="The capital of Freedonia is", target_new="Paris")
OTHER = EditRequest(prompt="Danielle Darrieux speaks", target_new="English")
THIRD = EditRequest(prompt="The Eiffel Tower stands in", target_new="Rome")
TINY = {"memory_pool": [], "layer": -2, "num_steps": 10}


def test_wise_edits_and_detaches_exactly_on_every_family(tiny_model):
    editor = build_editor("wise", tiny_model, TINY)
    run_sequential_checks(tiny_model, editor, [EDIT, OTHER], SideMemory.key, size_of=lambda m: m.values["edits"])


def test_wise_main_weights_never_change_and_mask_bounds_the_shard(tiny_decoder):
    editor = build_editor("wise", tiny_decoder, {**TINY, "mask_ratio": 0.1})
    weights = {n: p.clone() for n, p in tiny_decoder.model.state_dict().items()}
    delta = editor.edit(tiny_decoder, [EDIT])
    memory = find_memory(tiny_decoder, SideMemory.key)
    assert all(torch.equal(p, weights[n]) for n, p in tiny_decoder.model.state_dict().items())
    changed = memory.values["current"] != memory.main
    assert bool(changed.any()) and not bool((changed & ~memory.values["current_mask"]).any())  # only masked entries
    assert float((memory.values["current"] - memory.main).abs().max()) <= editor.hparams.norm_constraint + 1e-6
    delta.undo(tiny_decoder)


def test_wise_shards_close_and_merge(tiny_decoder):
    editor = build_editor("wise", tiny_decoder, {**TINY, "shard_size": 1, "shards_per_merge": 2})
    deltas = [editor.edit(tiny_decoder, [EDIT])]
    memory = find_memory(tiny_decoder, SideMemory.key)
    first_mask = memory.values["current_mask"]
    deltas.append(editor.edit(tiny_decoder, [OTHER]))
    assert len(memory.values["shards"]) == 1 and memory.values["merged"] is None  # first shard closed
    assert not torch.equal(memory.values["current_mask"], first_mask)  # the new shard has its own random mask
    deltas.append(editor.edit(tiny_decoder, [THIRD]))
    assert memory.values["merged"] is not None and memory.values["shards"] == ()  # two closed shards merged
    assert memory.values["shard_count"] == 3
    deltas[-1].undo(tiny_decoder)
    assert len(memory.values["shards"]) == 1 and memory.values["merged"] is None
    for d in reversed(deltas[:-1]):
        d.undo(tiny_decoder)


def test_ties_merge_keeps_disjoint_edits_and_elects_signs():
    base = torch.zeros(2, 3)
    a = torch.tensor([[1.0, 0, 0], [0, 0, -2.0]])
    b = torch.tensor([[0, 3.0, 0], [0, 0, 4.0]])
    merged = ties_merge(base, [a, b], density=1.0)
    # Disjoint entries are kept; the conflict in [1, 2] is won by the larger total (+), averaged over agreeing.
    assert merged.tolist() == [[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]]
    trimmed = ties_merge(base, [a, b], density=0.34)  # each keeps its top 2 of 6 entries
    assert trimmed.tolist() == [[1.0, 3.0, 0.0], [0.0, 0.0, 4.0]]


def test_wise_router_leaves_unrelated_rows_alone(tiny_decoder):
    """A prompt whose activation score stays under the threshold gets the main memory's output, bit for bit."""
    editor = build_editor("wise", tiny_decoder, {**TINY, "act_ratio": 1.0})
    delta = editor.edit(tiny_decoder, [EDIT])
    memory = find_memory(tiny_decoder, SideMemory.key)
    memory.values = {**memory.values, "current_min_act": float("inf")}  # nothing can reach the threshold
    probe = ["A completely different sentence about rivers"]
    routed_off = logits_of(tiny_decoder, probe, ["water"])
    delta.undo(tiny_decoder)
    assert torch.equal(routed_off, logits_of(tiny_decoder, probe, ["water"]))


@pytest.mark.parametrize("overrides, field", [({"mask_ratio": 0}, "mask_ratio"), ({"alpha": 3.0, "beta": 2.0}, "beta"),
                                              ({"shard_size": 0}, "shard_size"), ({"merge_density": 1.5}, "merge_density"),
                                              ({"layer": 40}, "layer"), ({"memory_pool": "wikitext:5"}, "memory_pool")])
def test_wise_bad_config_names_the_field(tiny_decoder, overrides, field):
    with pytest.raises(ConfigError, match=field):
        build_editor("wise", tiny_decoder, overrides).edit(tiny_decoder, [EDIT])


def test_wise_real_model_edit_and_locality(smollm2):
    check_real_model_edit_and_locality(smollm2, "wise")


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_wise_100_sequential_edits(smollm2, data):
    from patch_checks import sequential_report

    summary = sequential_report(smollm2, "wise", data, 100)
    assert summary["locality"] >= 0.9

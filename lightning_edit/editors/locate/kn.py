"""KN: knowledge neurons (Dai et al. 2022), with the neuron edit of EasyEdit's KN.

1. Attribution. For a prompt and the answer token the model should give, the activation of every
   MLP intermediate neuron (the input of ``layout.mlp_out``: after the nonlinearity / gating) at the
   prompt's last token is scaled by α = 1/steps … 1 while everything else runs as usual; the
   integrated gradient of P(answer) (Riemann sum) times the activation is the neuron's attribution.
   Each block is attributed on its own, as in the paper, but all blocks' scaled copies run in one
   batch: only the last position changes, so the prompt's other positions come once from a key/value
   cache.
2. Selection. Neurons whose attribution exceeds ``adaptive_threshold`` × the largest one are the
   coarse set of a prompt; the refined set keeps neurons found for more than ``refine_fraction`` of
   the prompts (the edit prompt and its rephrases), falling back to the edit prompt's coarse set when
   nothing survives.
3. Edit. For every selected neuron, its value vector (its column in ``mlp_out``'s weight) loses
   ``edit_scale`` × the embedding of the old answer and gains ``edit_scale`` × the embedding of
   the new one (Dai et al. §5; EasyEdit's ``edit_knowledge``), times the sign of the neuron's
   activation: gated MLPs (SwiGLU) have negative activations, where the paper's GELU/BERT neurons
   were positive. ``embedding: output`` takes the lm_head rows (identical to the word embeddings
   of tied models such as smollm2; for untied models the rows that read the residual stream),
   ``input`` the word embeddings as EasyEdit does.

Multi-token targets: the first new token is written against target_true's first token (the fact the
neurons express); each later token of target_new, after the prompt followed by the new tokens before
it, gets its own neurons, attributed to what the model predicts there now, unless it already predicts
the new token (an extension: the paper and EasyEdit edit one token).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ...errors import ConfigError
from ...hooks import hooks
from ...models.loading import LoadedModel
from ...models.teacher_forcing import cache_argument, output_cache, prompt_ids, target_ids
from ...requests import EditRequest
from ..base import Editor, HyperParams, add_update, register_editor
from ...models.ops import resolve_layers

Neuron = tuple[int, int]  # (block, intermediate index)


@dataclass
class KNHyperParams(HyperParams):
    layers: Optional[list[int]] = None  # blocks searched for neurons; None: every block
    steps: int = 20  # Riemann steps of the integrated gradient
    adaptive_threshold: float = 0.2  # keep neurons above this fraction of the largest attribution
    refine_fraction: float = 0.5  # keep neurons found for more than this fraction of the prompts
    use_rephrases: bool = True  # refine across the edit prompt and its rephrase prompts
    edit_scale: float = 2.0  # multiple of the embeddings subtracted / added to each value vector
    embedding: str = "output"  # "output": lm_head rows (what reads the residual stream); "input": word embeddings
    max_neurons: Optional[int] = None  # per target token, the strongest this many (None: no cap)
    max_target_tokens: Optional[int] = None  # edit at most this many leading tokens of target_new
    rows_per_pass: int = 640  # scaled copies per forward/backward pass (memory bound)

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"field 'steps' must be ≥ 1 (Riemann steps of the integrated gradient), got {self.steps}")
        if not 0.0 < self.adaptive_threshold <= 1.0:
            raise ConfigError(f"field 'adaptive_threshold' must be in (0, 1] (a fraction of the largest attribution), got {self.adaptive_threshold}")
        if not 0.0 <= self.refine_fraction < 1.0:
            raise ConfigError(f"field 'refine_fraction' must be in [0, 1), got {self.refine_fraction}")
        if self.embedding not in ("input", "output"):
            raise ConfigError(f"field 'embedding' must be 'input' (word embeddings) or 'output' (lm_head rows), got {self.embedding!r}")
        if self.edit_scale <= 0:
            raise ConfigError(f"field 'edit_scale' must be positive, got {self.edit_scale}")
        if self.layers is not None and not self.layers:
            raise ConfigError("field 'layers' is empty; list blocks to search or use null for all")
        for name in ("max_neurons", "max_target_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"field '{name}' must be ≥ 1 or null, got {value}")
        if self.rows_per_pass < self.steps:
            raise ConfigError(f"field 'rows_per_pass' ({self.rows_per_pass}) must be at least 'steps' ({self.steps})")


def _last_token_batch_forward(loaded: LoadedModel, ids: list[int], rows: int) -> tuple[dict, torch.Tensor]:
    """Model inputs for ``rows`` copies of the prompt's last token, with the rest of the prompt in a cache."""
    device = loaded.device
    last = torch.tensor([[ids[-1]]] * rows, device=device)
    if len(ids) == 1:
        return {"input_ids": last}, last
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids[:-1]], device=device), use_cache=True)
    # the cache's names differ across transformers 5.x (past_key_values → cache): read and pass it by the
    # names this version uses
    cache = output_cache(out)
    cache.batch_repeat_interleave(rows)
    return {"input_ids": last, cache_argument(loaded.model): cache, "use_cache": True}, last


def integrated_gradients(loaded: LoadedModel, ids: list[int], answer_id: int, layers: Sequence[int], steps: int,
                         rows_per_pass: int = 640, return_activations: bool = False):
    """Attribution of every intermediate neuron of ``layers`` for ``answer_id`` after ``ids``: [len(layers), inter]
    (and, with ``return_activations``, the unscaled activations at the last token, same shape)."""
    layout, model = loaded.layout, loaded.model
    alphas = torch.arange(1, steps + 1, device=loaded.device, dtype=torch.float32) / steps
    per_pass = max(1, rows_per_pass // steps)
    results: dict[int, torch.Tensor] = {}
    for start in range(0, len(layers), per_pass):
        group = list(layers[start: start + per_pass])
        inputs, _ = _last_token_batch_forward(loaded, ids, len(group) * steps)
        scaled: dict[int, torch.Tensor] = {}
        originals: dict[int, torch.Tensor] = {}

        def make(slot: int, layer: int):
            rows = slice(slot * steps, (slot + 1) * steps)

            def pre_hook(module, args):
                x = args[0]
                activation = x[rows, -1].detach()  # rows of this block's group: all hold the unscaled activation
                originals[layer] = activation[0].float()
                # α·activation in float32, rounded once to the model's dtype for the forward
                leaf = (alphas[:, None] * activation.float()).to(x.dtype).requires_grad_(True)
                scaled[layer] = leaf
                x = x.clone()
                x[rows, -1] = leaf
                return (x,) + tuple(args[1:])

            return pre_hook

        factory = lambda: (layout.mlp_out_module(model, layer).register_forward_pre_hook(make(slot, layer))  # noqa: E731
                           for slot, layer in enumerate(group))
        with torch.enable_grad(), hooks(factory):
            logits = model(**inputs).logits[:, -1].float()
            prob = torch.softmax(logits, dim=-1)[:, answer_id]
            grads = torch.autograd.grad(prob.sum(), [scaled[layer] for layer in group])
        for layer, grad in zip(group, grads):
            results[layer] = originals[layer] * grad.float().mean(0)  # activation × mean gradient along the path
    scores = torch.stack([results[layer] for layer in layers])
    if return_activations:
        return scores, torch.stack([originals[layer] for layer in layers])
    return scores


def coarse_neurons(scores: torch.Tensor, layers: Sequence[int], threshold: float) -> list[Neuron]:
    """Neurons above ``threshold`` × the largest attribution (Dai et al.'s adaptive threshold)."""
    top = scores.max()
    if top <= 0:
        return []
    picked = (scores > threshold * top).nonzero().tolist()
    return [(layers[i], j) for i, j in picked]


@register_editor
class KNEditor(Editor):
    name = "kn"
    HParams = KNHyperParams
    needs_subject = False
    supports_batch = False  # each request finds its own neurons

    def _layers(self, loaded: LoadedModel) -> list[int]:
        n = loaded.layout.num_layers(loaded.model)
        if self.hparams.layers is None:
            return list(range(n))
        return resolve_layers(self.hparams.layers, n)

    def _check_model(self, loaded: LoadedModel) -> None:
        if loaded.layout.is_encoder_decoder:
            raise ConfigError(f"kn: model {loaded.name!r} is encoder-decoder; the attribution runs a decoder-only model "
                              "with a key/value cache. Use a decoder-only model.")

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        self._check_model(loaded)
        return [loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in self._layers(loaded)]

    def find_neurons(self, loaded: LoadedModel, contexts: Sequence[list[int]], answer_id: int) -> list[tuple[Neuron, float]]:
        """Refined knowledge neurons of ``answer_id`` across the prompts ``contexts`` (token ids), strongest first,
        each with the sign of its activation on the first prompt (gated MLPs have negative activations too)."""
        hp = self.hparams
        layers = self._layers(loaded)
        coarse: list[list[Neuron]] = []
        scores_by_neuron: dict[Neuron, float] = {}
        signs: dict[Neuron, float] = {}
        for ids in contexts:
            scores, activations = integrated_gradients(loaded, ids, answer_id, layers, hp.steps, hp.rows_per_pass,
                                                       return_activations=True)
            found = coarse_neurons(scores, layers, hp.adaptive_threshold)
            coarse.append(found)
            for layer, j in found:
                scores_by_neuron[(layer, j)] = scores_by_neuron.get((layer, j), 0.0) + float(scores[layers.index(layer), j])
                signs.setdefault((layer, j), 1.0 if activations[layers.index(layer), j] >= 0 else -1.0)
        counts = Counter(n for found in coarse for n in set(found))
        refined = [n for n, c in counts.items() if c > hp.refine_fraction * len(contexts)]
        if not refined:
            refined = list(coarse[0])
        refined.sort(key=lambda n: -scores_by_neuron[n])
        if hp.max_neurons is not None:
            refined = refined[: hp.max_neurons]
        return [(n, signs[n]) for n in refined]

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        self._check_model(loaded)
        hp = self.hparams
        (request,) = requests
        tok, layout, model = loaded.tokenizer, loaded.layout, loaded.model
        embeddings = layout.module(model, layout.embeddings if hp.embedding == "input" else layout.lm_head).weight
        prompts = [request.prompt, *(request.rephrase_prompts if hp.use_rephrases else ())]
        prompt_tokens = [prompt_ids(tok, p) for p in prompts]
        new_ids = target_ids(tok, request.target_new)
        if hp.max_target_tokens is not None:
            new_ids = new_ids[: hp.max_target_tokens]
        true_first = target_ids(tok, request.target_true)[0] if request.target_true else None

        plan: list[tuple[list[tuple[Neuron, float]], int, int]] = []  # (neurons with signs, old token, new token)
        for position, new_id in enumerate(new_ids):
            contexts = [ids + new_ids[:position] for ids in prompt_tokens]
            if position == 0 and true_first is not None:
                old_id = true_first
            else:
                with torch.no_grad():
                    old_id = int(model(input_ids=torch.tensor([contexts[0]], device=loaded.device)).logits[0, -1].argmax())
            if old_id == new_id:
                continue  # the model already gives the new token here
            neurons = self.find_neurons(loaded, contexts, old_id)
            plan.append((neurons, old_id, new_id))
        # Attribute every position on the unedited model first, then write all value vectors.
        with torch.no_grad():
            for neurons, old_id, new_id in plan:
                direction = (embeddings[new_id].float() - embeddings[old_id].float()) * hp.edit_scale
                for (layer, j), sign in neurons:
                    # the value vector enters the residual stream times the activation: follow its sign
                    weight = layout.linear_weight(layout.mlp_out_module(model, layer))
                    add_update(weight[:, j], sign * direction)  # float32 sum, one rounding to the weight's dtype
        return []

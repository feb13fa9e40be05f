"""SERAC (Mitchell et al. 2022, "Memory-Based Model Editing at Scale").

The base model is never changed. Edits go into an explicit memory; a trained *scope classifier* decides
whether an input falls under a stored edit, and a trained *counterfactual model* answers in-scope inputs;
out-of-scope inputs get the base model's own output.

Choices for a CPU budget (said in the docs and the report):
- Scope classifier: the frozen base model's hidden states after block ``scope_layer`` (each token
  L2-normalised), averaged over the tokens seen so far (a causal running mean, so the decision at a
  position only uses the text before it, as a language model must), then a trained 2-layer projection;
  an input is in scope of edit ``e`` when ``σ(s · cos(q, k_e) + b) > scope_threshold`` (``k_e``: the same
  embedding of the edit prompt). A bi-encoder like the paper's embedding variant, reusing the base model.
- Counterfactual model: the base model itself reading "<edit prompt> <new answer>\\n" before the input,
  plus trained LoRA adapters (rank ``lora_rank``) on the attention and MLP output projections of every
  block, active only for in-scope rows. Small to train and to ship (a few MB), and it can copy the new
  answer from its context.

The edit is a patch (``attach``/``detach``) that routes the model's forward: every position whose prefix
is in scope gets the counterfactual model's logits, every other position the base model's, unchanged.
While a patch is attached ``generate`` runs without a key/value cache (the routing re-reads the whole
prefix); detaching restores the forward and the cache setting exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional, Sequence, Union

import torch

from ....errors import CheckpointError, ConfigError, EditFailedError
from ....hooks import collect_handles, remove_handles
from ....models.loaded import LoadedModel
from ....models.ops import pad_right, pad_token_id
from ....models.patches import EntryPatch, PatchChange, register_patch
from ....models.teacher_forcing import prompt_ids
from ....requests import EditRequest
from ..hypernetwork import LearnedEditor, LearnedHyperParams
from .network import SERACNetwork, lora_active, lora_shapes, running_mean_features, scope_features  # noqa: F401
from ...base import register_editor



@dataclass
class SERACHyperParams(LearnedHyperParams):
    scope_layer: int = 6  # scope features: output of this block of the frozen base model
    scope_dim: int = 256
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["attn_out", "mlp_out"])  # ModelLayout templates
    lora_layers: Optional[list[int]] = None  # None: every block
    edit_template: str = "{prompt} {target}\n"  # what the counterfactual model reads before the input
    scope_threshold: float = 0.5
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("scope_layer", "scope_dim", "lora_rank", "lora_alpha", "lora_targets",
                                               "lora_layers", "edit_template")

    def validate(self) -> None:
        if self.scope_dim < 1 or self.lora_rank < 1:
            raise ConfigError("fields 'scope_dim' and 'lora_rank' must be ≥ 1")
        if not 0.0 < self.scope_threshold < 1.0:
            raise ConfigError("field 'scope_threshold' must lie strictly between 0 and 1")
        bad = [t for t in self.lora_targets if t not in ("attn_out", "mlp_out", "mlp_in")]
        if bad or not self.lora_targets:
            raise ConfigError(f"field 'lora_targets' must name layout projections among attn_out, mlp_out, mlp_in; got {self.lora_targets}")
        if "{prompt}" not in self.edit_template or "{target}" not in self.edit_template:
            raise ConfigError("field 'edit_template' must contain {prompt} and {target}")


def edit_prefix_ids(loaded: LoadedModel, template: str, request: EditRequest) -> list[int]:
    return loaded.tokenizer(template.format(prompt=request.prompt, target=request.target_new), add_special_tokens=False)["input_ids"]


def prompt_keys(loaded: LoadedModel, network: SERACNetwork, layer: int, prompts: Sequence[str]) -> torch.Tensor:
    """(E, k) scope embeddings of edit prompts (running mean at each prompt's last token)."""
    rows = [prompt_ids(loaded.tokenizer, p) for p in prompts]
    ids, mask = pad_right(rows, pad_token_id(loaded.tokenizer), loaded.device)
    feats = scope_features(loaded, layer, ids, mask)
    last = torch.tensor([len(r) - 1 for r in rows], device=feats.device)
    return network.classifier.embed(feats[torch.arange(len(rows), device=feats.device), last])


@dataclass(eq=False)
class SERACEdits:
    """Some edits in the memory of a model's SERAC router (one ``PatchChange``'s entry): their scope keys and the
    token ids put before an in-scope input for the counterfactual model."""

    requests: list[EditRequest]
    keys: torch.Tensor
    prefixes: list[list[int]]


@register_patch
class SERACRouter(EntryPatch):
    """In the model's patch registry while at least one SERAC edit is attached: holds the edit memory and routes
    each forward through hooks (a pre-hook that turns the key/value cache off, a hook recording the scope block's
    output, and a hook on the model's output that replaces in-scope positions by the counterfactual model's logits).
    Its entries are the edits (``SERACEdits``); detached with its last edit."""

    kind = "serac-router"
    key = "serac"

    def __init__(self, loaded: LoadedModel, network: SERACNetwork, hparams: SERACHyperParams):
        self.loaded, self.network, self.hparams = loaded, network, hparams
        self.edits: list[SERACEdits] = []
        self._saved_use_cache: Any = None
        self._handles: list = []
        self._scope_output: Optional[torch.Tensor] = None
        self._inputs: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._inside = False  # the counterfactual pass runs the same model: its hooks must let it through

    # ---- entries (EntryPatch) --------------------------------------------------------------------
    def add_entry(self, entry: SERACEdits) -> None:
        self.edits.append(entry)

    def remove_entry(self, entry: SERACEdits) -> None:
        self.edits.remove(entry)

    def has_entry(self, entry: object) -> bool:
        return entry in self.edits

    @property
    def empty(self) -> bool:
        return not self.edits

    # ---- memory ----------------------------------------------------------------------------------
    def memory(self) -> tuple[torch.Tensor, list[list[int]]]:
        keys = torch.cat([p.keys for p in self.edits], dim=0)
        prefixes = [ids for p in self.edits for ids in p.prefixes]
        return keys, prefixes

    # ---- saved state: the memory, the trained network and the settings it was built with -----------
    def config(self) -> dict:
        return {"hparams": self.hparams.to_dict(), "prefixes": [ids for p in self.edits for ids in p.prefixes],
                "edits": [len(p.prefixes) for p in self.edits]}

    def state_dict(self) -> dict[str, torch.Tensor]:
        network = {f"network/{k}": v.detach() for k, v in self.network.state_dict().items()}
        return {"keys": self.memory()[0], **network} if self.edits else network

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor], loaded: LoadedModel) -> "SERACRouter":
        hp = SERACHyperParams.from_dict(config["hparams"], source="saved serac patch")
        if not 0 <= hp.scope_layer < loaded.layout.num_layers(loaded.model):
            raise CheckpointError(f"serac: saved scope_layer {hp.scope_layer} is outside model {loaded.name!r}")
        hidden = loaded.model.get_input_embeddings().weight.shape[1]
        network = SERACNetwork(hidden, hp.scope_dim, lora_shapes(loaded, hp.lora_targets, hp.lora_layers), hp.lora_rank, hp.lora_alpha)
        expected = {f"network/{k}": v for k, v in network.state_dict().items()}
        saved = {k: v for k, v in state.items() if k.startswith("network/")}
        wrong = sorted(k for k in set(expected) | set(saved) if k not in saved or k not in expected
                       or saved[k].shape != expected[k].shape or saved[k].dtype != expected[k].dtype)
        if wrong:
            raise CheckpointError(f"serac: the saved network does not fit model {loaded.name!r} with the saved settings "
                                  f"({len(wrong)} tensor(s) missing, extra or of another shape or dtype: {wrong[:3]})")
        network.load_state_dict({k[len("network/"):]: v for k, v in saved.items()})
        network.to(loaded.device).eval().requires_grad_(False)
        sizes, prefixes, keys = [int(n) for n in config["edits"]], config["prefixes"], state.get("keys")
        if keys is None or len(prefixes) != sum(sizes) or keys.shape != (sum(sizes), hp.scope_dim) or not sizes:
            raise CheckpointError(f"serac: the saved memory holds {len(prefixes)} prefixes and keys of shape "
                                  f"{None if keys is None else list(keys.shape)} for {sum(sizes)} edits of width {hp.scope_dim}")
        if not all(isinstance(t, int) for ids in prefixes for t in ids) or any(
                t < 0 or t >= len(loaded.tokenizer) for ids in prefixes for t in ids):
            raise CheckpointError(f"serac: the saved prefixes are not token ids of model {loaded.name!r}'s tokenizer")
        router = cls(loaded, network, hp)
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        router.edits = [SERACEdits([], part, prefixes[o: o + n]) for o, n, part in zip(offsets, sizes, torch.split(keys, sizes))]
        return router

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        keys = state.get("keys")
        sizes = [p.keys.shape[0] for p in self.edits]
        if keys is None or keys.shape[0] != sum(sizes):
            raise CheckpointError(f"serac: saved keys do not match the {sum(sizes)} edits in memory")
        for p, part in zip(self.edits, torch.split(keys, sizes)):
            p.keys = part

    # ---- the hooks -------------------------------------------------------------------------------
    def on_attach(self, loaded: LoadedModel) -> None:
        model = loaded.model
        scope_block = model.get_submodule(loaded.layout.block_name(self.hparams.scope_layer))
        self._handles = collect_handles(self._register_hooks(model, scope_block))
        config = getattr(model, "generation_config", None)
        if config is not None:
            self._saved_use_cache = config.use_cache
            config.use_cache = False  # routing needs the whole prefix at every step

    def _register_hooks(self, model: torch.nn.Module, scope_block: torch.nn.Module) -> Iterator:
        yield model.register_forward_pre_hook(self._before, with_kwargs=True)
        yield scope_block.register_forward_hook(self._record_scope)
        yield model.register_forward_hook(self._route, with_kwargs=True)

    def on_detach(self, loaded: LoadedModel) -> None:
        remove_handles(self._handles)
        config = getattr(loaded.model, "generation_config", None)
        if config is not None:
            config.use_cache = self._saved_use_cache

    def _before(self, module, args, kwargs):
        if self._inside:
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values", kwargs.get("cache"))  # the cache argument's name differs across transformers 5.x
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            raise EditFailedError("a SERAC-edited model routes each position by its whole prefix and cannot continue from a "
                                  "key/value cache; call it with use_cache=False (generate does so while the edit is attached)")
        if input_ids is None:
            raise EditFailedError("a SERAC-edited model needs input_ids (not inputs_embeds) to decide the scope of an input")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache")}
        kwargs["use_cache"] = False
        attention_mask = kwargs.get("attention_mask")
        self._inputs = (input_ids, torch.ones_like(input_ids) if attention_mask is None else attention_mask)
        self._scope_output = None
        return args, kwargs

    def _record_scope(self, module, args, output):
        if not self._inside:
            self._scope_output = output[0] if isinstance(output, (tuple, list)) else output

    def _route(self, module, args, kwargs, out):
        if self._inside or self._inputs is None or self._scope_output is None:
            return None
        (input_ids, attention_mask), hidden = self._inputs, self._scope_output
        self._inputs, self._scope_output = None, None
        with torch.no_grad():
            feats = running_mean_features(hidden, attention_mask)
            keys, prefixes = self.memory()
            probs = torch.sigmoid(self.network.classifier.logits(self.network.classifier.embed(feats), keys.to(feats.device)))
            best_prob, best = probs.max(-1)
            in_scope = (best_prob > self.hparams.scope_threshold) & attention_mask.bool()
        logits = out.logits
        # The positions the logits are of: all, the last n (generate), or given indices (teacher-forced scoring
        # asks for its target positions only).
        kept = kept_positions(kwargs.get("logits_to_keep", 0), input_ids.shape[1], input_ids.device)
        if kept.numel() != logits.shape[1]:
            raise EditFailedError(f"SERAC: {logits.shape[1]} logit positions returned for {kept.numel()} asked for")
        in_scope, best = in_scope[:, kept], best[:, kept]
        if not in_scope.any():
            return None
        logits = logits.clone()
        jobs = [(row, e) for row in range(input_ids.shape[0]) for e in best[row][in_scope[row]].unique().tolist()]
        rows = [prefixes[e] + input_ids[row][attention_mask[row].bool()].tolist() for row, e in jobs]
        ids, mask = pad_right(rows, pad_token_id(self.loaded.tokenizer), input_ids.device)
        self._inside = True
        try:
            with torch.no_grad(), lora_active(self.loaded, self.network):
                cf_logits = self.loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            self._inside = False
        for j, (row, e) in enumerate(jobs):
            valid_positions = attention_mask[row].bool().nonzero().squeeze(-1)
            p = len(prefixes[e])
            cf_row = cf_logits[j, p: p + len(valid_positions)]  # aligned with the row's real tokens
            full = torch.zeros(input_ids.shape[1], logits.shape[-1], dtype=logits.dtype, device=logits.device)
            full[valid_positions] = cf_row.to(logits.dtype)
            take = in_scope[row] & (best[row] == e)
            logits[row][take] = full[kept][take]
        out.logits = logits
        return out


def kept_positions(logits_to_keep: Union[int, torch.Tensor], seq_len: int, device: torch.device) -> torch.Tensor:
    """Sequence positions of the logits a transformers forward returns for ``logits_to_keep``: 0 → all, n → the
    last n, a 1-D tensor → those indices."""
    if isinstance(logits_to_keep, torch.Tensor):
        return logits_to_keep.to(device=device, dtype=torch.long).reshape(-1)
    n = int(logits_to_keep or 0)
    return torch.arange(seq_len - n if n else 0, seq_len, device=device)


@register_editor
class SERACEditor(LearnedEditor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "serac"
    HParams = SERACHyperParams
    supports_batch = True  # a batch is several memory entries
    # 2: scoring that asks for the logits of given positions (logits_to_keep as indices) got them shifted by one
    # (the router took them for the last positions); cells computed with 1 are wrong.
    results_version = 2

    def _check(self, loaded: LoadedModel) -> None:
        if loaded.layout.is_encoder_decoder:
            raise ConfigError("serac here routes decoder-only language models; an encoder-decoder model "
                              f"({loaded.layout.family}) is not supported")
        n = loaded.layout.num_layers(loaded.model)
        if not 0 <= self.hparams.scope_layer < n:
            raise ConfigError(f"field 'scope_layer' is {self.hparams.scope_layer}, outside the model's {n} blocks")

    def build_network(self, loaded: LoadedModel) -> SERACNetwork:
        self._check(loaded)
        hp = self.hparams
        hidden = loaded.model.get_input_embeddings().weight.shape[1]
        return SERACNetwork(hidden, hp.scope_dim, lora_shapes(loaded, hp.lora_targets, hp.lora_layers), hp.lora_rank, hp.lora_alpha)

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return []  # the base model's weights never change

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        network = self._network(loaded)
        self._check(loaded)
        router = loaded.patches.get(SERACRouter.key)
        if router is not None and router.network is not network:
            raise EditFailedError("this model already carries SERAC edits from another trained editor; undo them first")
        with torch.no_grad():
            # an attached router does not disturb this: the pass stops at the scope block, before any routing
            keys = prompt_keys(loaded, network, self.hparams.scope_layer, [r.prompt for r in requests])
        prefixes = [edit_prefix_ids(loaded, self.hparams.edit_template, r) for r in requests]
        edits = SERACEdits(list(requests), keys, prefixes)
        return [loaded.patches.change(SERACRouter, edits, create=lambda: SERACRouter(loaded, network, self.hparams))]

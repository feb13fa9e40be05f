"""Causal tracing (Meng et al. 2022, ROME §2): where does a model recall a fact about a subject?

Noise on the subject's token embeddings corrupts the run; restoring one clean state (a block's output, or the
MLP / attention outputs of a window of blocks) at one token position shows how much of the true answer's
probability that state carries back: the indirect effect, p(restored) − p(corrupted).

Each restored run is exact but cheap: a state restored at block L, position t changes nothing below L nor before
t, so the blocks below the first changed one are replaced for that pass by the corrupted run's stored outputs
(positions t onwards), and positions before t come from the corrupted run's key/value cache. Every noise sample
of every restoration that starts at the same (position, block) runs in one batch. A token before the subject
never sees the noise, so restoring it gives the corrupted run's probability without a pass.
"""
from __future__ import annotations

import contextlib
import inspect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, RequestError
from ..hooks import edit_output, hooks, trace
from ..models import LoadedModel
from ..models.teacher_forcing import cache_argument, output_cache, target_ids
from ..requests import EditRequest

KINDS = ("hidden", "mlp", "attn")
NOISE_MULTIPLE = 3.0  # ROME: noise of 3 × the standard deviation of subject-token embeddings


@dataclass
class RecordTrace:
    """One prompt's tracing: ``scores[kind][t, layer]`` is p(answer) with that state restored."""

    case_id: object
    prompt: str
    subject: str
    answer: str
    tokens: list[str]
    subject_range: tuple[int, int]  # token positions [begin, end) that were noised
    high: float  # p(answer) on the clean run
    low: float  # p(answer) on the corrupted run, averaged over noise samples
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


def subject_token_range(tokenizer, prompt: str, subject: str) -> tuple[list[int], int, int]:
    """Token ids of ``prompt`` (as the model reads it, special tokens included) and the range [begin, end) of
    the tokens overlapping the subject's first occurrence."""
    start = prompt.find(subject)
    if start < 0:
        raise RequestError(f"field 'subject' {subject!r} does not occur in field 'prompt' {prompt!r}; "
                           "causal tracing noises the subject's tokens, so write it into the prompt exactly")
    end = start + len(subject)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("causal tracing needs a fast tokenizer (character offsets locate the subject's tokens)")
    enc = tokenizer(prompt, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not inside:
        raise RequestError(f"subject {subject!r} covers no token of {prompt!r}")
    return list(enc["input_ids"]), inside[0], inside[-1] + 1


def subject_embedding_std(loaded: LoadedModel, requests: Sequence[EditRequest]) -> float:
    """Standard deviation of the embedding outputs of the subjects' tokens (ROME takes it over known_1000's
    subjects; here over the subjects being traced)."""
    embed = loaded.layout.module(loaded.model, loaded.layout.embeddings)
    rows = []
    with torch.no_grad():
        for r in requests:
            ids, b, e = subject_token_range(loaded.tokenizer, r.prompt, r.subject)
            rows.append(embed(torch.tensor([ids[b:e]], device=loaded.device))[0].float())
    return torch.cat(rows).std().item()


def window_layers(layer: int, n_layers: int, window: int) -> range:
    """The ``window`` blocks centred on ``layer`` whose MLP/attention outputs are restored together (ROME's)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@contextlib.contextmanager
def replaced_forwards(outputs: dict[nn.Module, object]) -> Iterator[None]:
    """Make each module return a fixed output without computing it (its hooks still run); undone on exit."""
    saved: list[tuple[nn.Module, object]] = []
    try:
        for module, value in outputs.items():
            saved.append((module, module.__dict__.get("forward")))  # an instance-level forward is put back too
            module.forward = lambda *args, _value=value, **kwargs: _value
        yield
    finally:
        for module, previous in saved:
            if previous is None:
                del module.forward
            else:
                module.forward = previous


@dataclass(frozen=True)
class Cell:
    """One restoration: the ``kind`` state(s) of ``layer`` (or its window) at token ``position``."""

    kind: str
    layer: int
    position: int


class PromptTracer:
    """The clean and corrupted runs of one prompt, and restored runs on top of them."""

    def __init__(self, loaded: LoadedModel, request: EditRequest, noise_std: float, samples: int = 10,
                 window: int = 10, seed: int = 0) -> None:
        if loaded.layout.is_encoder_decoder:
            raise ConfigError(f"causal tracing restores decoder states at the subject's tokens; {loaded.name} is an "
                              "encoder-decoder model whose decoder never reads the subject. Use a decoder-only model")
        if not request.target_true:
            raise RequestError(f"record {request.case_id!r}: causal tracing measures p(target_true); the record has "
                               "no 'target_true' (CounterFact records have one)")
        self.loaded, self.request, self.samples, self.window = loaded, request, samples, window
        model, layout = loaded.model, loaded.layout
        ids, self.begin, self.end = subject_token_range(loaded.tokenizer, request.prompt, request.subject)
        self.ids = torch.tensor([ids], device=loaded.device)
        self.answer_id = target_ids(loaded.tokenizer, request.target_true)[0]
        self.n_layers = layout.num_layers(model)
        self.blocks = [f"{layout.blocks}.{i}" for i in range(self.n_layers)]
        self.names = {"hidden": self.blocks,
                      "mlp": [layout.name(layout.mlp_out, i) for i in range(self.n_layers)],
                      "attn": [layout.name(layout.attn_out, i) for i in range(self.n_layers)]}
        self.embed = layout.module(model, layout.embeddings)
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        self._cache_arg = cache_argument(model)
        everything = [layout.embeddings, *self.blocks, *self.names["mlp"], *self.names["attn"]]
        with torch.no_grad(), trace(model, everything) as clean:
            self.high = self._probabilities(model(input_ids=self.ids, use_cache=False, **self._keep), 1)[0].item()
        self.clean = {name: clean[name].output[0] for name in everything}  # (tokens, width) each
        self.block_returns_tuple = self._block_returns_tuple()
        generator = torch.Generator().manual_seed(seed)  # one noise draw per prompt, shared by all its restorations
        embeds = self.clean[layout.embeddings]
        noise = torch.randn(samples, self.end - self.begin, embeds.shape[-1], generator=generator) * noise_std
        self.noised = embeds.expand(samples, -1, -1).clone()
        self.noised[:, self.begin:self.end] += noise.to(embeds.device, embeds.dtype)
        with torch.no_grad(), edit_output(self.embed, lambda h: self.noised), trace(model, self.blocks) as corrupted:
            out = model(input_ids=self.ids.expand(samples, -1), use_cache=True, **self._keep)
        self.low = self._probabilities(out, 1).mean().item()
        self.corrupted = [corrupted[name].output for name in self.blocks]  # (samples, tokens, width) each
        self.cache = [(layer.keys, layer.values) for layer in output_cache(out).layers]

    def _block_returns_tuple(self) -> bool:
        """Whether a block returns a tuple (older transformers) or a tensor: stand-ins must return the same."""
        seen: list[bool] = []
        block = self.loaded.layout.module(self.loaded.model, self.loaded.layout.blocks)[0]
        with hooks(lambda: iter([block.register_forward_hook(lambda m, i, o: seen.append(isinstance(o, tuple)))])), torch.no_grad():
            self.loaded.model(input_ids=self.ids[:, :1], use_cache=False)
        return seen[0]

    def _probabilities(self, output, n_cells: int) -> torch.Tensor:
        """p(answer) at the last position, averaged over each cell's noise samples (one value per cell)."""
        probs = torch.softmax(output.logits[:, -1].float(), dim=-1)[:, self.answer_id]
        return probs.view(n_cells, -1).mean(1)

    @property
    def tokens(self) -> list[str]:
        return [self.loaded.tokenizer.decode([i]) for i in self.ids[0].tolist()]

    # -- restorations ------------------------------------------------------------------------------------
    def patched_modules(self, cell: Cell) -> tuple[list[str], int]:
        """Module names whose output is restored, and the first block whose computation that changes."""
        if cell.kind == "hidden":
            return [self.blocks[cell.layer]], cell.layer + 1
        layers = window_layers(cell.layer, self.n_layers, self.window)
        return [self.names[cell.kind][i] for i in layers], layers.start

    def restored_probability(self, patches: Sequence[tuple[str, int]]) -> float:
        """p(answer) of the corrupted run with the named modules' outputs at the given positions restored to
        their clean values: every block computed (ROME's ``trace_with_patch``; the reference for ``run``)."""
        by_module: dict[str, list[int]] = defaultdict(list)
        for name, position in patches:
            by_module[name].append(position)
        model = self.loaded.model
        with contextlib.ExitStack() as stack, torch.no_grad():
            stack.enter_context(edit_output(self.embed, lambda h: self.noised))
            for name, positions in by_module.items():
                stack.enter_context(edit_output(model.get_submodule(name), self._restore(name, positions, slice(None), 0)))
            out = model(input_ids=self.ids.expand(self.samples, -1), use_cache=False, **self._keep)
        return self._probabilities(out, 1).item()

    def _restore(self, name: str, positions: Sequence[int], rows, offset: int):
        clean = self.clean[name]

        def restore(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            for p in positions:
                h[rows, p - offset] = clean[p]
            return h

        return restore

    def run(self, cells: Sequence[Cell]) -> list[float]:
        """p(answer) for each cell; cells sharing a position and first changed block run in one batch."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        out = [self.low] * len(cells)
        for k, cell in enumerate(cells):
            # A token before the subject never sees the noise: its clean and corrupted states are the same,
            # so restoring them gives the corrupted run's p, with no pass to run.
            if cell.position >= self.begin:
                groups[(cell.position, self.patched_modules(cell)[1])].append(k)
        for (position, start), members in groups.items():
            for k, p in zip(members, self._run_group([cells[k] for k in members], position, start)):
                out[k] = p
        return out

    def _run_group(self, cells: Sequence[Cell], t: int, start: int) -> list[float]:
        model, n, s = self.loaded.model, len(cells), self.samples
        rows_of: dict[str, list[int]] = defaultdict(list)  # module → batch rows (cell-major) it is restored in
        for c, cell in enumerate(cells):
            for name in self.patched_modules(cell)[0]:
                rows_of[name].extend(range(c * s, (c + 1) * s))
        # Below `start` nothing differs from the corrupted run: those blocks return its outputs, uncomputed.
        fixed = {}
        for i in range(min(start, self.n_layers)):
            value = self.corrupted[i][:, t:].repeat(n, 1, 1)
            fixed[self.loaded.layout.module(model, self.loaded.layout.blocks)[i]] = (value,) if self.block_returns_tuple else value
        kwargs = dict(self._keep, use_cache=t > 0)
        if t > 0:  # positions before t are the corrupted run's: their keys and values come from its cache
            from transformers import DynamicCache

            cache = DynamicCache()
            for i, (keys, values) in enumerate(self.cache):
                cache.update(keys[:, :, :t].repeat(n, 1, 1, 1), values[:, :, :t].repeat(n, 1, 1, 1), i)
            kwargs[self._cache_arg] = cache
        noised = self.noised[:, t:].repeat(n, 1, 1)
        with contextlib.ExitStack() as stack, torch.no_grad():
            stack.enter_context(replaced_forwards(fixed))
            stack.enter_context(edit_output(self.embed, lambda h: noised))
            for name, rows in rows_of.items():
                stack.enter_context(edit_output(model.get_submodule(name), self._restore(name, [t], rows, t)))
            out = model(input_ids=self.ids[:, t:].expand(n * s, -1), **kwargs)
        return self._probabilities(out, n).tolist()

    def trace(self, kinds: Sequence[str] = KINDS) -> RecordTrace:
        """Every (kind, layer, position) restoration of the prompt."""
        n_tokens = self.ids.shape[1]
        result = RecordTrace(case_id=self.request.case_id, prompt=self.request.prompt, subject=self.request.subject,
                             answer=self.request.target_true, tokens=self.tokens, subject_range=(self.begin, self.end),
                             high=self.high, low=self.low)
        for kind in kinds:
            cells = [Cell(kind, layer, t) for t in range(n_tokens) for layer in range(self.n_layers)]
            result.scores[kind] = torch.tensor(self.run(cells)).view(n_tokens, self.n_layers)
        return result


def trace_requests(loaded: LoadedModel, requests: Sequence[EditRequest], kinds: Sequence[str] = KINDS,
                   samples: int = 10, window: int = 10, noise_multiple: float = NOISE_MULTIPLE, seed: int = 0,
                   progress: bool = True,
                   on_trace: Optional[Callable[[list[RecordTrace]], None]] = None) -> list[RecordTrace]:
    """Causal traces of each request's prompt (subject noised, p(target_true) measured). ``on_trace`` is called
    with the traces so far after each one, so a long run's outputs are on disk as each record finishes."""
    if not requests:
        raise RequestError("no request to trace; give records with 'subject' and 'target_true'")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"kinds {unknown} are not traced; choose from {list(KINDS)}")
    for r in requests:
        r.require_subject("causal tracing")
    noise_std = noise_multiple * subject_embedding_std(loaded, requests)
    from tqdm.auto import tqdm

    traces = []
    for k, request in enumerate(tqdm(requests, desc="tracing", disable=not progress)):
        tracer = PromptTracer(loaded, request, noise_std, samples=samples, window=window, seed=seed + k)
        traces.append(tracer.trace(kinds))
        if on_trace is not None:
            on_trace(traces)
    return traces

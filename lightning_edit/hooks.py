"""Scoped reads and rewrites of module inputs/outputs. Every hook is removed on exit, even on error.

``trace(model, names)`` records what named modules receive and return; ``edit_output`` lets a function
rewrite a module's output for the duration of a ``with`` block.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn


@dataclass
class Recorded:
    input: Optional[torch.Tensor] = None  # first positional input
    output: Optional[torch.Tensor] = None


@dataclass
class TraceResult:
    records: dict[str, Recorded] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Recorded:
        return self.records[name]


def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
        return x[0]
    return None


@contextlib.contextmanager
def hooks(handles_factory: Callable[[], Iterable]) -> Iterator[None]:
    """Register hooks via ``handles_factory`` and remove every one of them on exit.

    The factory returns its handles as a generator (``(m.register_forward_hook(f) for m in modules)``): each handle
    is kept the moment it exists, so a factory that raises halfway leaves none of the hooks it already registered."""
    handles: list = []
    try:
        collect_handles(handles_factory(), into=handles)
        yield
    finally:
        remove_handles(handles)


def collect_handles(registrations: Iterable, into: Optional[list] = None) -> list:
    """Consume ``registrations`` (a generator of hook handles) into a list; if it raises halfway, the handles
    already registered are removed before the error goes on (a patch's ``on_attach`` leaves nothing behind)."""
    handles = [] if into is None else into
    try:
        for handle in registrations:
            handles.append(handle)
    except BaseException:
        remove_handles(handles)
        raise
    return handles


def remove_handles(handles: list) -> None:
    """Remove every handle (each ``remove`` is safe to repeat) and empty the list."""
    for handle in reversed(handles):
        handle.remove()
    handles.clear()


@contextlib.contextmanager
def trace(
    model: nn.Module,
    names: Sequence[str],
    *,
    keep_input: bool = False,
    keep_output: bool = True,
    detach: bool = True,
    stop_after: Optional[str] = None,
) -> Iterator[TraceResult]:
    """Record inputs and/or outputs of the named submodules during the block.

    ``stop_after``: raise ``StopForward`` once that module has run, so a caller that only needs lower
    layers skips the rest of the network (catch it with ``run_until``).
    """
    result = TraceResult({n: Recorded() for n in names})

    def make(name: str):
        def hook(module, inputs, output):
            rec = result.records[name]
            if keep_input:
                t = _first_tensor(inputs)
                rec.input = t.detach() if (detach and t is not None) else t
            if keep_output:
                t = _first_tensor(output)
                rec.output = t.detach() if (detach and t is not None) else t
            if stop_after == name:
                raise StopForward()

        return hook

    with hooks(lambda: (model.get_submodule(n).register_forward_hook(make(n)) for n in names)):
        yield result


class StopForward(Exception):
    """Raised by a trace hook to end a forward pass early; swallowed by ``run_until``."""


def run_until(fn: Callable[[], object]) -> None:
    try:
        fn()
    except StopForward:
        pass


@contextlib.contextmanager
def edit_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace ``module``'s (first) output by ``fn(output)`` while the block runs."""

    def hook(mod, inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    with hooks(lambda: (module.register_forward_hook(hook) for _ in (1,))):
        yield

"""Where a model's tensors live, and reading and writing them there: the one layer beneath the editors that makes a
model dispatched by accelerate (``--device-map``) editable like one held whole.

accelerate keeps an offloaded parameter on the ``meta`` device; its values live in the ``weights_map`` of the
``AlignDevicesHook`` on its module, which loads them before each forward and drops them after. That map is a dict of
CPU tensors (CPU offload) or memory-mapped ``.dat`` files in the offload folder with an ``index.json`` (disk offload).
So:

* ``read_tensor`` gives the real values of a parameter or buffer wherever they live;
* ``write_tensor`` writes values back there (into the ``.dat`` file, flushed, so the next forward reads them);
* ``materialised`` holds the named parameters' modules as real parameters for the length of an edit (for methods
  that train weights with autograd or read them many times) and writes them back to their store on exit, even on
  error.

A tensor read from the original checkpoint file (``safetensors_file`` in the index) is never written there: the
first write copies it into the offload folder as a ``.dat`` file and points the index at it.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import LightningEditError


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def offload_hook(module: nn.Module) -> Optional[Any]:
    """The accelerate hook of ``module`` that holds its tensors away from it (``offload`` set), or None."""
    hook = getattr(module, "_hf_hook", None)
    for candidate in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):  # a SequentialHook's parts
        if getattr(candidate, "offload", False) and getattr(candidate, "weights_map", None) is not None:
            return candidate
    return None


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed this model (``dispatch_model`` / ``from_pretrained(device_map=...)``)."""
    return getattr(model, "hf_device_map", None) is not None


def is_offloaded(model: nn.Module, name: str) -> bool:
    """Whether parameter or buffer ``name`` lives in an offload store (CPU dict or disk), not on its module."""
    module, attr = _owner(model, name)
    return getattr(module, attr).device.type == "meta" and offload_hook(module) is not None


def read_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The real values of parameter or buffer ``name``: the tensor itself when it is on a device, else the one its
    offload store holds (a fresh copy read from its file for disk offload)."""
    module, attr = _owner(model, name)
    tensor = getattr(module, attr)
    if tensor.device.type != "meta":
        return tensor
    hook = offload_hook(module)
    if hook is None:
        raise LightningEditError(f"{name} is on the meta device and no accelerate hook holds its values: the model was "
                                 "not loaded whole; load it again (with --device-map to spread it)")
    return hook.weights_map[attr]


def write_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Write ``value`` into parameter or buffer ``name`` where it lives (device, CPU store or offload file)."""
    module, attr = _owner(model, name)
    tensor = getattr(module, attr)
    if tuple(value.shape) != tuple(tensor.shape):
        raise LightningEditError(f"cannot write a {list(value.shape)} tensor into {name}, a {list(tensor.shape)} one")
    with torch.no_grad():
        if tensor.device.type != "meta":
            tensor.copy_(value)
            return
        hook = offload_hook(module)
        if hook is None:
            raise LightningEditError(f"{name} is on the meta device and no accelerate hook holds its values")
        _write_stored(hook.weights_map, attr, value.detach().to(tensor.dtype))


def _write_stored(weights_map: Any, attr: str, value: torch.Tensor) -> None:
    """Write into an accelerate weights map: a ``PrefixedDataset`` over an ``OffloadedWeightsLoader`` (dict of CPU
    tensors, then ``.dat`` files) or over a plain dict."""
    from accelerate.utils import offload_weight, save_offload_index
    from accelerate.utils.offload import OffloadedWeightsLoader

    store, key = getattr(weights_map, "dataset", weights_map), getattr(weights_map, "prefix", "") + attr
    state = store.state_dict if isinstance(store, OffloadedWeightsLoader) else store
    if key in state:  # CPU offload: the stored tensor itself
        state[key].copy_(value.to(state[key].device))
        return
    if not isinstance(store, OffloadedWeightsLoader) or key not in store.index or store.save_folder is None:
        raise LightningEditError(f"cannot write {key}: accelerate holds it in a {type(store).__name__} this project "
                                 "cannot write to; use --offload-folder for disk offload")
    # offload_weight rewrites the .dat file in place (memmap, flushed) and sets index[key] to it: a tensor read from
    # the original checkpoint (safetensors_file) is copied into the offload folder, never written in the checkpoint.
    entry = {key: None}
    offload_weight(value.cpu().contiguous(), key, store.save_folder, index=entry)
    store.index[key] = entry[key]
    save_offload_index(entry, store.save_folder)


@contextmanager
def materialised(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """For the length of the block, the modules owning ``names`` hold real parameters on their execution device
    (their offload hook paused: a forward uses them as they are, autograd trains them); on exit, even on error,
    their values are written back to their offload store and the modules offloaded again. No-op for tensors already
    on a device."""
    held: list[tuple[nn.Module, Any, list[str]]] = []
    try:
        for module in _offloaded_owners(model, names):
            hook = offload_hook(module)
            tensors = _hook_tensors(module, hook)
            held.append((module, hook, tensors))
            _load_onto(module, hook, tensors)
        yield
    finally:
        _offload_again(held)


def _offloaded_owners(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    owners: dict[int, nn.Module] = {}
    for name in names:
        if is_offloaded(model, name):
            module, _ = _owner(model, name)
            owners.setdefault(id(module), module)
    return list(owners.values())


def _hook_tensors(module: nn.Module, hook: Any) -> list[str]:
    from accelerate.utils import named_module_tensors

    return [n for n, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                               recurse=hook.place_submodules, remove_non_persistent=True)]


def _load_onto(module: nn.Module, hook: Any, tensors: list[str]) -> None:
    from accelerate.utils import set_module_tensor_to_device

    for name in tensors:
        set_module_tensor_to_device(module, name, hook.execution_device, value=hook.weights_map[name])
    hook.offload = False  # pre_forward now only moves inputs: the real parameters above are used and trained


def _offload_again(held: list[tuple[nn.Module, Any, list[str]]]) -> None:
    """Write each held module's tensors back to its store, then put them on ``meta`` again; every module is done
    even if one fails, and the first failure is raised after."""
    from accelerate.utils import set_module_tensor_to_device

    first: Optional[BaseException] = None
    for module, hook, tensors in reversed(held):
        try:
            for name in tensors:
                tensor = _lookup(module, name)
                if tensor.device.type != "meta":
                    _write_stored(hook.weights_map, name, tensor.detach())
                    set_module_tensor_to_device(module, name, "meta")
        except BaseException as err:  # noqa: BLE001  (the other modules are still written back)
            first = first or err
        finally:
            hook.offload = True
    if first is not None:
        raise first


def _lookup(module: nn.Module, name: str) -> torch.Tensor:
    owner, attr = _owner(module, name)
    return getattr(owner, attr)


def input_device(model: nn.Module) -> torch.device:
    """Where inputs go: the first parameter's device, or, for a dispatched model whose first parameter is offloaded,
    its hook's execution device."""
    for module in model.modules():
        for tensor in module.parameters(recurse=False):
            if tensor.device.type != "meta":
                return tensor.device
            hook = offload_hook(module)
            if hook is not None:
                return torch.device(hook.execution_device)
    return torch.device("cpu")


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: its first parameter's device, or its offload hook's execution device when its
    parameters are offloaded (``meta``)."""
    tensor = next(module.parameters())
    if tensor.device.type != "meta":
        return tensor.device
    hook = offload_hook(module) or next((offload_hook(m) for m in module.modules() if offload_hook(m)), None)
    return torch.device(hook.execution_device) if hook is not None else tensor.device


def real_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each offloaded tensor read from its store (a hash or a save sees real values)."""
    state = model.state_dict()
    return {name: (read_tensor(model, name) if t.device.type == "meta" else t) for name, t in state.items()}


def offload_files(folder: str | Path) -> dict[str, bytes]:
    """The bytes of every file in an offload folder (``.dat`` files and ``index.json``): to compare a folder before
    and after (tests, checks), never to load from."""
    folder = Path(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

"""Every editor must follow the model's device: checked on a CPU-only machine.

Two checks, because a dev machine has no GPU:

- ``DeviceTracker`` (a ``TorchFunctionMode``) plays a second device on the CPU. Tensors of the model (parameters,
  buffers) are "on the device"; so is whatever is computed from them and whatever is created or moved with an
  explicit ``device=`` / ``.to(device)``. A tensor created without a device (``torch.zeros(n)``), a ``.cpu()``
  copy, or a module that was never moved (``nn.Linear`` built by the editor) is "on the host". Any operation that
  mixes a host tensor (of one element or more dimensions; CUDA accepts 0-dim CPU scalars) with a device tensor
  is what CUDA refuses with "Expected all tensors to be on the same device": the tracker records it.
- a model on the ``meta`` device: after ``prepare`` (loading a trained editor), every tensor the editor holds
  must be on the model's device.
"""
from __future__ import annotations

import traceback
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from conftest import build_tiny
from lightning_edit.checkpoints import save_editor_checkpoint
from lightning_edit.editors import build_editor
from lightning_edit.evaluation.measure import measure
from lightning_edit.requests import EditRequest, PromptAnswer

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="English",
                      target_true="French", rephrase_prompts=("Danielle Darrieux's mother tongue is",),
                      locality=(PromptAnswer("The sky is", "blue"),), case_id=0)

# ---------------------------------------------------------------------------------------------------
# The tracker
# ---------------------------------------------------------------------------------------------------
_FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.as_tensor, torch.eye,
              torch.randn, torch.rand, torch.randint, torch.linspace, torch.randperm, torch.scalar_tensor}
_LIKE = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
         torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full, torch.Tensor.new_empty, torch.Tensor.new_tensor}
_TO_HOST = {torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.item}
# CUDA accepts a CPU index tensor (and PackedSequence wants CPU lengths)
_HOST_ARGS_ALLOWED = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}
_SKIP_NAMES = {"_pack_padded_sequence", "__get__", "__set__", "size", "dim", "numel", "__len__", "__bool__", "__repr__",
               "__format__", "data_ptr", "untyped_storage", "is_floating_point", "stride", "element_size", "is_contiguous"}


class DeviceTracker(TorchFunctionMode):
    """See the module docstring. ``violations``: (operation, where in lightning_edit) of every host/device mix.

    Each tensor is on the device, on the host, or unknown (made where the mode cannot see, e.g. ``.grad``
    written by ``backward``); unknown tensors mix with either side without a complaint."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._device: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()
        self._host: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()
        # storages of the model's own tensors (they live as long as the test): views and re-wrappings of them
        self._model_storages = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
        self.violations: list[tuple[str, str]] = []
        for t in list(model.parameters()) + list(model.buffers()):
            self.mark(t, "device")

    def mark(self, t, where: str) -> None:
        if not isinstance(t, torch.Tensor):
            return
        keep, drop = (self._device, self._host) if where == "device" else (self._host, self._device)
        keep[id(t)] = t
        if drop.get(id(t)) is t:
            del drop[id(t)]

    def state(self, t: torch.Tensor):
        if self._device.get(id(t)) is t:
            return "device"
        if self._host.get(id(t)) is t:
            return "host"
        try:
            if t.numel() > 0 and t.untyped_storage().data_ptr() in self._model_storages:
                return "device"
        except Exception:  # noqa: BLE001  (sparse, nested, ...)
            pass
        return None

    def __enter__(self):
        # nn.Parameter(t) makes a new tensor object out of sight of the mode: it inherits t's side
        self._parameter_new = torch.nn.Parameter.__new__
        tracker, original = self, torch.nn.Parameter.__new__

        def parameter_new(cls, data=None, requires_grad=True):
            out = original(cls, data, requires_grad)
            side = tracker.state(data) if isinstance(data, torch.Tensor) else "host"
            if side:
                tracker.mark(out, side)
            return out

        torch.nn.Parameter.__new__ = staticmethod(parameter_new)
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__new__ = self._parameter_new
        return super().__exit__(*exc)

    @staticmethod
    def _where() -> str:
        frames = [f for f in traceback.extract_stack()[:-2]
                  if "lightning_edit" in f.filename and "/tests/" not in f.filename]
        return f"{frames[-1].filename.split('lightning_edit/')[-1]}:{frames[-1].lineno}" if frames else "?"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.cpu and args and out is args[0]:
            out = out.clone()  # on a GPU, .cpu() is a copy: the original stays on the device
        name = getattr(func, "__name__", str(func))
        if name in _SKIP_NAMES:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        explicit_device = kwargs.get("device") is not None or any(
            isinstance(a, torch.device) or (isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda", "meta", "mps"))
            for a in args[1:])
        states = [self.state(t) for t in inputs]
        if func in _TO_HOST:
            side = "host"
        elif func in _FACTORIES:
            side = "device" if explicit_device else "host"
        elif func in _LIKE:
            side = "device" if explicit_device else (states[0] if states else None)
        elif name in ("to", "cuda", "type_as"):
            side = "device" if explicit_device or "device" in states else (states[0] if states else None)
        else:
            dev = "device" in states
            host = any(s == "host" and t.dim() > 0 for s, t in zip(states, inputs))
            if dev and host and func not in _HOST_ARGS_ALLOWED:
                self.violations.append((name, self._where()))
            side = "device" if dev else ("host" if "host" in states else None)
        if side:
            for t in outputs:
                self.mark(t, side)
        return out


def tracked(loaded, fn):
    with DeviceTracker(loaded.model) as tracker:
        fn()
    return sorted(set(tracker.violations))


# ---------------------------------------------------------------------------------------------------
# Editors under the tracker
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stats_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("device_stats_text") / "text.txt"
    path.write_text("\n".join(f"Sentence {i}: a person named Alex {i} lives in the city of Paris and speaks French." for i in range(200)))
    return path


def _locate(stats_text, tmp_path, **extra) -> dict:
    return dict(mom2_n_tokens=256, stats_text=str(stats_text), stats_dir=str(tmp_path), progress=False, context_prefixes=1,
                context_length=3, v_num_grad_steps=3, **extra)


def trained_checkpoint(method: str, loaded, directory, **arch) -> str:
    """A "trained" editor for ``loaded``: its network as built (non-zero where zero would hide a bug), saved."""
    from lightning_edit.editors import get_editor_class

    cls = get_editor_class(method)
    hp = cls.HParams.for_model(method, loaded.name, loaded.layout.family, arch)
    network = cls(hp).build_network(loaded)
    with torch.no_grad():
        for name, t in network.named_buffers():
            if name.endswith("count"):
                t.fill_(10.0)  # MEND's and MALMEN's running norms in use (count ≥ 2), as after training
            elif name.endswith("m2"):
                t.fill_(9.0)
        if method == "serac":
            network.classifier.bias.fill_(100.0)  # every position in scope: the counterfactual model runs
            for b in network.lora_b.values():
                b.normal_(0, 0.1)
    save_editor_checkpoint(directory, method=method, state_dict=network.state_dict(), config={**hp.architecture()},
                           loaded=loaded)
    return str(directory)


LEARNED_ARCH = {"mend": {"rank": 8, "layers": [-2, -1]},
                "malmen": {"rank": 8, "layers": [-2, -1]},
                "ke": {"layers": [-1], "lstm_hidden": 8, "condition_dim": 8, "hidden_dim": 8},
                "serac": {"scope_layer": 1, "scope_dim": 8, "lora_rank": 2, "lora_layers": [-1]}}

METHODS = {
    "ft-l": lambda st, tmp: {"layers": [1], "num_steps": 2},
    "ft-m": lambda st, tmp: {"layers": [1], "num_steps": 2},
    "kn": lambda st, tmp: {"layers": [2, 3], "steps": 3, "max_target_tokens": 1},
    "rome": lambda st, tmp: _locate(st, tmp, layers=[1]),
    "memit": lambda st, tmp: _locate(st, tmp, layers=[1, 2]),
    "alphaedit": lambda st, tmp: _locate(st, tmp, layers=[1, 2], L2=1.0),
    "r-rome": lambda st, tmp: _locate(st, tmp, layers=[1]),
    "emmet": lambda st, tmp: _locate(st, tmp, layers=[1, 2]),
    "pmet": lambda st, tmp: _locate(st, tmp, layers=[1, 2]),
    "grace": lambda st, tmp: {"num_steps": 2},
    "wise": lambda st, tmp: {"memory_pool": [], "layer": -2, "num_steps": 2},
    "t-patcher": lambda st, tmp: {"memory_pool": [], "num_steps": 2},
    "calinet": lambda st, tmp: {"num_steps": 2},
    "ultraedit": lambda st, tmp: {"modules": {"mlp_in": [1, 2]}, "lr": 1e-2},
    "lora": lambda st, tmp: {"rank": 2, "num_steps": 2, "layers": [1, 2]},
}


@pytest.mark.parametrize("method", [*METHODS, *LEARNED_ARCH])
def test_editor_never_mixes_host_and_device_tensors(method, tokenizer, stats_text, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    if method in LEARNED_ARCH:
        overrides = {"editor_checkpoint": trained_checkpoint(method, loaded, tmp_path / method, **LEARNED_ARCH[method])}
    else:
        overrides = METHODS[method](stats_text, tmp_path)
    editor = build_editor(method, loaded, overrides)
    state: dict = {}

    def run():
        editor.prepare(loaded)
        state["delta"] = editor.edit(loaded, [REQUEST])
        measure(loaded, [REQUEST])
        state["delta"].undo(loaded)

    violations = tracked(loaded, run)
    assert not violations, f"{method}: host tensors meet the model's device in {violations}"


def test_tracker_catches_a_module_left_on_the_host(tokenizer):
    """The tracker itself: an unmoved nn.Linear applied to model activations is caught; once moved, it is not."""
    loaded = build_tiny("llama", tokenizer)
    ids = torch.tensor([[1, 2, 3]])
    state = {}

    def forward():
        linear = state.setdefault("linear", torch.nn.Linear(32, 4))
        hidden = loaded.model(input_ids=ids.to(loaded.device), output_hidden_states=True).hidden_states[-1]
        linear(hidden)

    assert tracked(loaded, forward)

    def moved():
        state["linear"] = torch.nn.Linear(32, 4).to(loaded.device)
        forward()

    assert tracked(loaded, moved) == []


# ---------------------------------------------------------------------------------------------------
# A trained editor follows a model on another device (meta)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(LEARNED_ARCH))
def test_loaded_editor_lives_on_the_models_device(method, tokenizer, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    directory = trained_checkpoint(method, loaded, tmp_path / method, **LEARNED_ARCH[method])
    fingerprint = loaded.weights_fingerprint()
    loaded.model.to("meta")
    loaded.weights_fingerprint = lambda: fingerprint  # meta tensors have no values to hash
    editor = build_editor(method, loaded, {"editor_checkpoint": directory})
    editor.prepare(loaded)
    held = {f"network.{n}": t for n, t in editor.network.named_parameters()}
    held.update({f"network.{n}": t for n, t in editor.network.named_buffers()})
    assert held
    wrong = {n: str(t.device) for n, t in held.items() if t.device != loaded.device}
    assert not wrong, f"{method}: tensors left off the model's device (meta): {wrong}"

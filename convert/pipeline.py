"""`convert`: a GLM-4 checkpoint folder (or cached Hub id) to one finished GGUF file."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

from glm4_local.convert.imatrix import compute_imatrix, load_imatrix, write_imatrix
from glm4_local.convert.outtypes import DEFAULT_OUT_TYPE, OUT_TYPES, OutType
from glm4_local.convert.safetensors import SafetensorsCheckpoint, find_weight_files
from glm4_local.convert.source import looks_like_repo_id, resolve_source
from glm4_local.convert.tensors import PlannedTensor, plan_tensors
from glm4_local.convert.texts import calibration_text
from glm4_local.convert.vocab import GGUFVocabulary, build_vocabulary, read_json, tokenizer_file
from glm4_local.convert.writer import ModelInfo, write_gguf
from glm4_local.core.atomic import (
    atomic_output,
    check_writable_target,
    output_error,
    remove_stale_temps,
    temp_path_beside,
)
from glm4_local.core.errors import CheckpointError, GGUFFileError, Glm4LocalError, Interrupted, OutputError
from glm4_local.core.families.family import ModelFamily, ModelSpec
from glm4_local.core.families.registry import family_for_config
from glm4_local.core.gguf.checks import check_model
from glm4_local.core.jsonfile import read_text
from glm4_local.core.llama.door import quantize
from glm4_local.core.paths import MODELS_DIR
from glm4_local.core.progress import Progress

IMATRIX_AUTO = "auto"  # measure an importance matrix on the built-in text, from the 16-bit model
ImatrixChoice = Path | Literal["auto"] | None


@dataclass
class Checkpoint:
    """Everything read from a checkpoint folder before any output is written."""

    folder: Path
    family: ModelFamily
    spec: ModelSpec
    info: ModelInfo
    vocab: GGUFVocabulary
    tensors: SafetensorsCheckpoint
    plan: list[PlannedTensor]


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    out_type: OutType
    input_bytes: int
    output_bytes: int
    seconds: float


def model_name(source: str, folder: Path) -> str:
    if looks_like_repo_id(source) and not Path(source).exists():
        return source.split("/")[-1]
    return folder.resolve().name


def load_checkpoint(source: str, download: bool = False, name: str | None = None) -> Checkpoint:
    """`name`: the model's name in the file (default: the repo's or the folder's)."""
    folder = resolve_source(source, download)
    config_path = folder / "config.json"
    config = read_json(config_path)
    family = family_for_config(config, str(config_path))
    spec = family.spec_from_config(config, str(config_path))
    tokenizer_config = read_json(folder / "tokenizer_config.json", required=False)
    generation = read_json(folder / "generation_config.json", required=False)
    tokenizer_path = tokenizer_file(family, folder)
    tensors = SafetensorsCheckpoint(find_weight_files(folder))
    shapes = {name: entry.shape for name, entry in tensors.entries.items()}
    plan = plan_tensors(family, spec, shapes, where=str(folder))
    vocab = build_vocabulary(family, tokenizer_path, tokenizer_config, spec.vocab_size)
    pad = config.get("pad_token_id")
    info = ModelInfo(
        name=name or model_name(source, folder),
        chat_template=checkpoint_template(folder, tokenizer_config),
        temperature=_sampling_default(generation, "temperature", folder / "generation_config.json"),
        top_p=_sampling_default(generation, "top_p", folder / "generation_config.json"),
        pad_token_id=pad if isinstance(pad, int) else None,
    )
    return Checkpoint(folder, family, spec, info, vocab, tensors, plan)


def checkpoint_template(folder: Path, tokenizer_config: dict[str, object]) -> str | None:
    """The checkpoint's own chat template, byte for byte: chat_template.jinja (where transformers now saves
    it), else tokenizer_config.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return read_text(jinja, CheckpointError)
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def _sampling_default(generation: dict[str, object], key: str, where: Path) -> float | None:
    """generation_config.json's `key`, when set: a finite number from 0 up, else CheckpointError (a NaN
    written into the GGUF would make every runtime refuse or misread it)."""
    value = generation.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CheckpointError(f"{where}: {key} is {value!r}, not a number from 0 up")
    return float(value)


def default_output(name: str, kind: OutType, models_dir: Path = MODELS_DIR) -> Path:
    return models_dir / f"{name}-{kind.label}.gguf"


def _written_weight_type(kind: OutType, checkpoint: Checkpoint) -> gguf.GGMLQuantizationType:
    if kind.tensor_type is not None:
        return kind.tensor_type
    # The quantizer's input: 16-bit, bf16 when the checkpoint is bf16 so nothing is rounded twice.
    bf16 = "BF16" in checkpoint.tensors.dtypes()
    return gguf.GGMLQuantizationType.BF16 if bf16 else gguf.GGMLQuantizationType.F16


def convert(
    source: str,
    kind: OutType = DEFAULT_OUT_TYPE,
    output: Path | None = None,
    force: bool = False,
    download: bool = False,
    imatrix: ImatrixChoice = None,
    progress: Progress | None = None,
    models_dir: Path = MODELS_DIR,
    notify: Callable[[str], None] = lambda message: None,
    name: str | None = None,
) -> ConvertResult:
    """Convert `source` to a GGUF of type `kind`; the file appears only when complete.

    `imatrix`: a llama-imatrix file, or "auto" to measure one (written beside the output as
    `<name>.imatrix`, for reuse) before quantizing. `notify` hears about stale temporary files removed.
    """
    started = time.perf_counter()
    checkpoint = load_checkpoint(source, download, name)
    if output is None:
        try:
            models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{models_dir}: cannot create the models folder ({e.strerror})") from e
    path = output or default_output(checkpoint.info.name, kind, models_dir)
    check_writable_target(path, force)
    for stale in remove_stale_temps(path.parent):
        notify(f"removed {stale}: a temporary file left by a conversion that was killed")
    importance = _importance_source(imatrix, kind, path, force)
    sink = progress or Progress()
    weight_type = _written_weight_type(kind, checkpoint)
    try:
        with atomic_output(path, force) as tmp:
            if kind.direct:
                _write(checkpoint, tmp, weight_type, kind.file_type, sink)
            else:
                _write_quantized(checkpoint, tmp, path, weight_type, kind, importance, sink, force)
            _check_output(tmp, path)
    finally:
        checkpoint.tensors.close()
    return ConvertResult(path, kind, checkpoint.tensors.total_bytes, path.stat().st_size,
                         time.perf_counter() - started)


def _check_output(written: Path, final: Path) -> None:
    """The checks `info` and `chat` run, on the written file before it is published: never a file that
    glm4-local itself would then refuse."""
    try:
        check_model(written)
    except GGUFFileError as e:
        raise CheckpointError(f"{final}: the converted file would not load, so it was not kept "
                              f"({str(e).removeprefix(f'{written}: ')})") from None


def imatrix_choice(text: str | None) -> ImatrixChoice:
    """What a user's imatrix argument means: nothing, "auto", or a file."""
    if text is None or text == IMATRIX_AUTO:
        return text  # type: ignore[return-value]
    return Path(text)


def _importance_source(imatrix: ImatrixChoice, kind: OutType, output: Path, force: bool
                       ) -> dict[str, np.ndarray] | Path | None:
    """Values read from a file, the path to write a measured matrix to ("auto"), or None."""
    if imatrix is None:
        return None
    if kind.direct:
        quantized = ", ".join(t.name for t in OUT_TYPES.values() if not t.direct)
        raise Glm4LocalError(f"an importance matrix only applies to types llama.cpp's quantizer makes "
                             f"({quantized}), not {kind.name}")
    if imatrix == IMATRIX_AUTO:
        target = output.with_suffix(".imatrix")
        check_writable_target(target, force)
        return target
    if not imatrix.is_file():
        raise CheckpointError(f"{imatrix}: imatrix file not found")
    return load_imatrix(imatrix)


def _write(checkpoint: Checkpoint, dest: Path, weight_type: gguf.GGMLQuantizationType,
           file_type: gguf.LlamaFileType, sink: Progress) -> None:
    sink.start("Converting", checkpoint.tensors.total_bytes, len(checkpoint.plan))
    write_gguf(dest, checkpoint.family, checkpoint.spec, checkpoint.vocab, checkpoint.info, checkpoint.plan,
               checkpoint.tensors, weight_type, file_type, progress=sink)


def _measure_importance(staging: Path, target: Path, force: bool, sink: Progress) -> dict[str, np.ndarray]:
    sink.start("Measuring importance (built-in text)", 0, 0)
    importance = compute_imatrix(staging, calibration_text(), on_tokens=sink.advance)
    with atomic_output(target, force) as tmp:
        write_imatrix(tmp, importance)
    return importance.values()


def _write_quantized(checkpoint: Checkpoint, dest: Path, final: Path, weight_type: gguf.GGMLQuantizationType,
                     kind: OutType, imatrix: dict[str, np.ndarray] | Path | None, sink: Progress,
                     force: bool) -> None:
    """The quantized file at `dest` (a temporary file that will become `final`)."""
    staging = temp_path_beside(dest, "16bit")
    try:
        file_type = (gguf.LlamaFileType.MOSTLY_BF16 if weight_type == gguf.GGMLQuantizationType.BF16
                     else gguf.LlamaFileType.MOSTLY_F16)
        _write(checkpoint, staging, weight_type, file_type, sink)
        kept = imatrix if isinstance(imatrix, Path) else None
        if kept is not None:
            imatrix = _measure_importance(staging, kept, force, sink)
        staged_bytes = staging.stat().st_size
        sink.start(f"Quantizing to {kind.label}", staged_bytes, len(checkpoint.plan))
        done_bytes = 0

        def on_tensor(done: int, total: int) -> None:  # llama.cpp reports each tensor as it starts it
            nonlocal done_bytes
            reached = staged_bytes * (done - 1) // max(total, 1)
            sink.advance(reached - done_bytes)
            done_bytes = reached
            if done > 1:
                sink.tensor_done()

        try:
            quantize(staging, dest, kind.file_type, imatrix=imatrix, on_tensor=on_tensor)
        except KeyboardInterrupt as e:
            if kept is None:
                raise
            number = e.signal_number if isinstance(e, Interrupted) else 2
            raise Interrupted(f"stopped; no GGUF was left behind, but the importance matrix measured first was "
                              f"kept as {kept} (reuse it with --imatrix {kept})", number) from None
        except Glm4LocalError as e:
            if disk_nearly_full(dest.parent):  # llama.cpp reports only "iostream error"
                raise OutputError(f"{final}: disk full while quantizing; nothing was left behind") from e
            raise Glm4LocalError(f"{final}: {str(e).removeprefix(f'{dest}: ')}") from e
        sink.advance(staged_bytes - done_bytes)
        sink.tensor_done()
    except OSError as e:
        raise output_error(final, e) from e
    finally:
        staging.unlink(missing_ok=True)


def disk_nearly_full(folder: Path, margin: int = 64 * 1024 * 1024) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


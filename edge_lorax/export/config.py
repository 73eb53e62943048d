"""What every export target receives: `ExportConfig` (the one place `edge-lorax export`'s options are declared, with
their defaults) and `ExportJob` (the inputs export.bundle has read and checked before any work).
Does not check or write anything: export.bundle checks what is common, each target module (export.encoder_bundle,
export.llm_bundle) checks and writes its own.
"""

from dataclasses import dataclass
from pathlib import Path

from edge_lorax.formats.subspace import Subspace
from edge_lorax.formats.user import User


@dataclass(frozen=True)
class ExportConfig:
    """`edge-lorax export`'s options; a target refuses, before any work, the ones it does not offer."""

    task: str | None = None  # names.TASKS; None: from the --coeffs head, else causal-lm for LM checkpoints, else features
    per_example: bool = False  # coefficient inputs with a leading batch dim: one user per example
    merge: bool = False  # fold the --coeffs user into the weights (encoder only)
    quantize: str | None = None  # None, "int8" or "int4" (int4: decoder only)
    ort_format: bool = False  # also .ort files beside each .onnx (encoder only)
    overwrite: bool = False  # replace an existing output folder
    exporter: str = "torchscript"  # torch -> ONNX exporter: torchscript or dynamo (dynamo: encoder only)
    num_labels: int | None = None  # classification head labels (>= 2) when the --coeffs user has no head; other tasks refuse it
    allow_base_mismatch: bool = False  # accept a model whose id differs from the subspace's base
    builder_options: tuple = ()  # KEY=VALUE options of onnxruntime-genai's model builder (decoder only)
    fused: bool = False  # also model.fused.onnx, attention fused (encoder only)
    gradient: bool = False  # also model.grad.onnx for a classification / regression bundle (encoder only)
    target: str | None = None  # formats.bundle TARGETS name; None: chosen by the model (export.bundle.choose_target)
    max_cache_len: int | None = None  # KV positions a decoder .pte holds (--target executorch, decoders only); None: 256


@dataclass(frozen=True)
class ExportJob:
    """The checked inputs of one export: a target reads these, never the raw arguments again."""

    path: Path  # the model folder (resolved from an id or alias)
    model_config: dict  # its config.json
    subspace: Subspace
    subspace_path: Path
    coeffs: User | None  # the --coeffs user, conformed to the subspace (zero-padded), or None: zeros
    coeffs_path: Path | None
    task: str
    labels: int  # head labels (0: no head)
    config: ExportConfig
    progress: object = None  # callable(phase: str): told as each long phase starts (the CLI prints it on stderr)

    def say(self, phase: str):
        """Report a phase that may take a while (exporting, quantizing, verifying); silent without a callback."""
        if self.progress is not None:
            self.progress(phase)

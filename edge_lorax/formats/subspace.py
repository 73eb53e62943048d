"""The subspace folder: `subspace_config.json` + `subspace.safetensors`, its dataclasses and its fingerprint.

Per adapted module `<module>.components_A` (K, in) with orthonormal rows, `<module>.components_B` (out, K) with
orthonormal columns, and the explained-variance ratios of the stacks they came from; the config records how they
were built and a fingerprint (sha256 of config and tensors) that every user file carries. numpy + safetensors only:
reading a subspace never imports the builder or torch. `read_subspace` refuses in one line naming the file a damaged
safetensors file, a config that is not a JSON object or has keys of the wrong type, an unknown format version, a
fingerprint that does not match, and modules whose tensors do not fit their config. Does not build subspaces
(edge_lorax.builder.subspace does).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_dir
from edge_lorax.formats.errors import InputError, MissingInputError
from edge_lorax.formats.jsonfile import read_json_object
from edge_lorax.formats.safetensors_file import read_safetensors

KIND = "edge-lorax-subspace"


class SubspaceError(InputError):
    """A subspace folder that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class ModuleSubspace:
    components_A: np.ndarray  # (K, in) float32, orthonormal rows
    components_B: np.ndarray  # (out, K) float32, orthonormal columns
    explained_A: np.ndarray  # (L,) explained-variance ratio per principal direction (centred stack)
    explained_B: np.ndarray  # (L,)
    rank: int  # largest source rank: the default coefficient rank r
    principal: int  # how many of the K components are principal (incl. the mean when kept); the rest augmented

    @property
    def k(self) -> int:
        return self.components_A.shape[0]


@dataclass(frozen=True)
class Subspace:
    modules: dict  # module name -> ModuleSubspace
    config: dict  # the subspace_config.json content (incl. fingerprint)

    @property
    def fingerprint(self) -> str:
        return self.config["fingerprint"]

    @property
    def base_model(self) -> str:
        return self.config["base_model"]


def fingerprint_tensors(tensors: dict, config: dict) -> str:
    """sha256 over the config (minus fingerprint) and every tensor's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "fingerprint"}, sort_keys=True).encode())
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


def subspace_tensors(modules: dict) -> dict:
    """{module: ModuleSubspace} -> the safetensors content (components and explained-variance ratios)."""
    out = {}
    for m, ms in modules.items():
        out[names.component_name(m, names.COMPONENTS_A)] = ms.components_A
        out[names.component_name(m, names.COMPONENTS_B)] = ms.components_B
        out[f"{m}.explained_A"], out[f"{m}.explained_B"] = ms.explained_A, ms.explained_B
    return out


def write_subspace(subspace: Subspace, path, overwrite: bool = False, sources=None) -> Path:
    """subspace_config.json + subspace.safetensors (+ sources.npz: the stacked projected sources, a formats.sources
    User), written to a temp dir and renamed into place."""
    from safetensors.numpy import save_file

    from edge_lorax.formats.sources import SOURCES_FILE, write_sources

    with atomic_dir(path, overwrite) as tmp:
        save_file(subspace_tensors(subspace.modules), str(tmp / names.SUBSPACE_WEIGHTS),
                  metadata={"fingerprint": subspace.fingerprint})
        (tmp / names.SUBSPACE_CONFIG).write_text(json.dumps(subspace.config, indent=1, sort_keys=True) + "\n")
        if sources is not None:
            write_sources(sources, tmp / SOURCES_FILE)
    return Path(path)


def _module(tensors: dict, cfg_path: Path, module: str, c) -> ModuleSubspace:
    """One module's entry, refused unless its config and tensors agree."""
    keys = [names.component_name(module, names.COMPONENTS_A), names.component_name(module, names.COMPONENTS_B),
            f"{module}.explained_A", f"{module}.explained_B"]
    if not isinstance(c, dict) or any(k not in tensors for k in keys) or not all(
            isinstance(c.get(k), int) and not isinstance(c.get(k), bool) for k in ("r", "principal")):
        raise SubspaceError(f"{cfg_path}: module {module} is incomplete; rebuild with `edge-lorax build`")
    ms = ModuleSubspace(*(tensors[k] for k in keys), c["r"], c["principal"])
    if not _consistent(ms):
        raise SubspaceError(f"{cfg_path}: module {module} has components of shapes {ms.components_A.shape} and "
                            f"{ms.components_B.shape} (r {ms.rank}, principal {ms.principal}), which do not fit; "
                            "rebuild with `edge-lorax build`")
    return ms


def _consistent(ms: ModuleSubspace) -> bool:
    """Float (K, in) and (out, K) components with K >= 1, 1-D ratios, r >= 1 and 0 <= principal <= K."""
    a, b = ms.components_A, ms.components_B
    floats = all(np.issubdtype(t.dtype, np.floating) for t in (a, b, ms.explained_A, ms.explained_B))
    shapes = a.ndim == 2 and b.ndim == 2 and a.shape[0] == b.shape[1] >= 1 and ms.explained_A.ndim == ms.explained_B.ndim == 1
    return floats and shapes and ms.rank >= 1 and 0 <= ms.principal <= a.shape[0]


def _check_config(cfg_path: Path, config: dict):
    """The keys every reader of a subspace uses have the types `edge-lorax build` writes."""
    types = {"base_model": str, "modules": dict, "fingerprint": str}
    for key, kind in types.items():
        if not isinstance(config.get(key), kind):
            raise SubspaceError(f"{cfg_path}: {key} is missing or not a {kind.__name__}; rebuild with `edge-lorax build`")
    if not isinstance(config.get("fan_in_fan_out", False), bool):
        raise SubspaceError(f"{cfg_path}: fan_in_fan_out is not true or false; rebuild with `edge-lorax build`")


def read_subspace(path) -> Subspace:
    """Load and verify: the stored fingerprint must match the tensors and config (edited files are refused)."""
    path = Path(path)
    cfg_path, weights = path / names.SUBSPACE_CONFIG, path / names.SUBSPACE_WEIGHTS
    if not (cfg_path.is_file() and weights.is_file()):
        raise MissingInputError(f"{path}: not a subspace folder (needs {names.SUBSPACE_CONFIG} and "
                                f"{names.SUBSPACE_WEIGHTS}); create one with `edge-lorax build`")
    config = read_json_object(cfg_path, "rebuild it with `edge-lorax build`", SubspaceError)
    tensors = read_safetensors(weights, "rebuild it with `edge-lorax build`", SubspaceError)
    if type(config.get("format_version")) is not int or config["format_version"] != names.FORMAT_VERSION:
        raise SubspaceError(f"{cfg_path}: format_version {config.get('format_version')} unsupported; "
                            "rebuild with this edge-lorax")
    _check_config(cfg_path, config)
    if fingerprint_tensors(tensors, config) != config.get("fingerprint"):
        raise SubspaceError(f"{path}: fingerprint mismatch, the files were edited or mixed; rebuild with `edge-lorax build`")
    modules_cfg = config["modules"]
    if not modules_cfg:
        raise SubspaceError(f"{cfg_path}: no modules; rebuild with `edge-lorax build`")
    modules = {m: _module(tensors, cfg_path, m, c) for m, c in modules_cfg.items()}
    extra = sorted(set(tensors) - set(subspace_tensors(modules)))
    if extra:
        raise SubspaceError(f"{weights}: tensor {extra[0]} ({len(extra)} in all) belongs to no module of the config; "
                            "rebuild with `edge-lorax build`")
    return Subspace(modules, config)

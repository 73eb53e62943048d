"""The bundle manifest (`manifest.json`): one schema for every export target, one writer, one reader.

A bundle folder is what `edge-lorax export` writes: model files, side files and this manifest. Every target writes
the same top-level keys and adds its own (docs/formats.md, "Bundle manifest"):

    kind, format_version, target, fingerprint, base_model, subspace_base_model, task, mode,
    inputs       -- every graph input in graph order: {"name", "dtype", "shape"} (+ "default": true for a user's)
    user_inputs  -- the user's inputs in the ORDER a positional runtime binds them: {"name", "shape", "dtype", "default"}
    coefficients -- {name: shape} of the coefficient inputs (head inputs excluded)
    files        -- {key: relative path | [relative paths] | null}; every path stays inside the folder

`target` says which runtime serves the folder: `onnx-encoder` (edge_lorax.runtime, optimum, sentence-transformers),
`genai-decoder` (onnxruntime-genai: edge_lorax.runtime.llm), `executorch` (room for a positional .pte target).
`read_manifest` makes every check for every target: JSON types, format version, the target, paths inside the
folder. Version-1 manifests (written before `target`, in the encoder's and the decoder's own shapes) still open: the
reader fills `target` and `user_inputs` from what they hold. numpy-free, torch-free. Does not open model files.
"""

import json
from pathlib import Path

from edge_lorax.formats import names
from edge_lorax.formats.atomic import atomic_file
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.jsonfile import read_json_object

__all__ = ["BundleError", "MANIFEST_VERSION", "TARGETS", "read_manifest", "write_manifest", "user_inputs",
           "user_input_shapes", "manifest_path", "resolve_inside", "bundle_file", "check_target",
           "check_types", "make_user_inputs", "TARGET_ENCODER", "TARGET_DECODER", "TARGET_EXECUTORCH"]

MANIFEST_VERSION = 2  # 2: `target` and `user_inputs`; 1 (no such keys) is still read
READABLE_VERSIONS = (1, MANIFEST_VERSION)
TARGET_ENCODER, TARGET_DECODER, TARGET_EXECUTORCH = "onnx-encoder", "genai-decoder", "executorch"
TARGETS = (TARGET_ENCODER, TARGET_DECODER, TARGET_EXECUTORCH)
FIX = "re-export the bundle with `edge-lorax export`"
REQUIRED = ("kind", "target", "fingerprint", "task", "mode", "files", "inputs", "user_inputs")
TARGET_REQUIRED = {TARGET_DECODER: ("kv", "eos_token_id")}  # what a target's runtime needs beyond REQUIRED

_NULL = type(None)
# Every key any reader uses, with the JSON types it may hold (a boolean is not an integer).
_TYPES = {"kind": (str,), "format_version": (int,), "target": (str,), "fingerprint": (str,), "task": (str, _NULL),
          "mode": (str,), "labels": (int, _NULL), "base_model": (str, _NULL), "subspace_base_model": (str, _NULL),
          "files": (dict,), "coefficients": (dict,), "inputs": (list,), "user_inputs": (list,), "outputs": (list,),
          "head": (dict, _NULL), "defaults": (str,), "verification": (dict,), "precision": (str,), "kv_cache": (bool,),
          "kv": (dict,), "eos_token_id": (int, list), "pad_token_id": (int, _NULL), "builder_options": (list,),
          "gradient": (dict,), "fusion": (dict,), "method": (dict,)}
_KV_TYPES = {"layers": (int,), "heads": (int,), "head_size": (int,), "context_length": (int,)}
_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
               _NULL: "null"}


class BundleError(InputError):
    """A bundle folder that cannot be served; the message names the path and the fix."""


def manifest_path(folder) -> Path:
    return Path(folder) / names.BUNDLE_MANIFEST


def check_types(path: Path, data: dict, types: dict, fix: str = FIX, error=BundleError):
    """Refuse a key of `data` whose JSON type is not one of `types[key]` (absent keys pass)."""
    for key, allowed in types.items():
        value = data.get(key)
        if key in data and type(value) not in allowed:
            want = " or ".join(_JSON_NAMES[t] for t in allowed)
            raise error(f"{path}: {key!r} is a JSON {_JSON_NAMES.get(type(value), 'value')}, expected {want}; {fix}")


# --------------------------------------------------------------------------------------------- paths

def resolve_inside(folder: Path, rel: str, referrer: Path) -> Path | None:
    """`folder / rel` resolved (links followed), or None when it lands outside the folder; an unresolvable path (a
    symlink loop, a NUL byte) is refused naming `referrer`, the file that names it."""
    try:
        target = (Path(folder) / rel).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise BundleError(f"{referrer}: names {rel!r}, which cannot be resolved ({e}); {FIX}") from e
    return target if target.is_relative_to(Path(folder).resolve()) else None


def bundle_file(folder: Path, name: str) -> Path | None:
    """A fixed-name file of the bundle (config.json, tokenizer files, genai_config.json) if present; refused if it
    links out of the folder."""
    folder = Path(folder)
    if not (folder / name).is_file():
        return None
    target = resolve_inside(folder, name, folder / name)
    if target is None:
        raise BundleError(f"{folder / name}: links outside the bundle folder; {FIX}")
    return target


def _file_paths(files: dict) -> list:
    """Every (key, relative path) of `files`: a value is a path, a list of paths or null."""
    out = []
    for key, value in files.items():
        for rel in value if isinstance(value, list) else [value]:
            out.append((key, rel))
    return out


def _check_files(mpath: Path, files: dict):
    """Every path in `files` is a string that stays inside the folder (no `..`, absolute path or link out)."""
    for key, rel in _file_paths(files):
        if rel is None:
            continue
        if not isinstance(rel, str) or not rel:
            raise BundleError(f"{mpath}: files[{key!r}] holds {rel!r}, not a relative path; {FIX}")
        if resolve_inside(mpath.parent, rel, mpath) is None:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(f"{mpath}: files[{key!r}] names {rel!r}, outside the bundle folder; {FIX}")
            raise BundleError(f"{mpath.parent / rel}: links outside the bundle folder (files[{key!r}] of {mpath.name}); {FIX}")


# --------------------------------------------------------------------------------------------- user inputs

def user_inputs(manifest: dict) -> list:
    """The user's inputs in binding order: [{"name", "shape", "dtype", "default"}] (shape: ints and symbolic dims)."""
    return manifest["user_inputs"]


def user_input_shapes(manifest: dict) -> dict:
    """{name: one user's shape}: a per-example input's leading symbolic (batch) dim is the run's, not the user's.
    Symbolic dims other than that are None (any size)."""
    out = {}
    for spec in user_inputs(manifest):
        shape = list(spec["shape"])
        if manifest.get("mode") == names.MODE_PER_EXAMPLE and shape and isinstance(shape[0], str):
            shape = shape[1:]
        out[spec["name"]] = tuple(d if isinstance(d, int) else None for d in shape)
    return out


def _is_dim(d) -> bool:
    return isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)


def _check_user_inputs(mpath: Path, manifest: dict):
    """user_inputs: a list of {"name": str, "shape": [dims], "dtype": str, "default": bool}, names unique."""
    seen = set()
    for i, spec in enumerate(manifest["user_inputs"]):
        ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("dtype"), str)
              and isinstance(spec.get("default"), bool) and isinstance(spec.get("shape"), list)
              and all(_is_dim(d) for d in spec["shape"]) and spec["name"] not in seen)
        if not ok:
            raise BundleError(f"{mpath}: user_inputs[{i}] is not a unique {{name, shape, dtype, default}} entry; {FIX}")
        seen.add(spec["name"])


def _user_inputs_v1(manifest: dict) -> list:
    """user_inputs of a version-1 manifest: its `inputs` entries marked `default` (encoder), else its
    `coefficients` (decoder: float32 optional inputs)."""
    listed = [i for i in manifest.get("inputs") or [] if isinstance(i, dict) and i.get("default")]
    if listed:
        return [{"name": i.get("name"), "shape": i.get("shape"), "dtype": i.get("dtype", "float32"), "default": True}
                for i in listed]
    return [{"name": n, "shape": s, "dtype": "float32", "default": True} for n, s in (manifest.get("coefficients") or {}).items()]


def _upgrade_v1(manifest: dict) -> dict:
    """A version-1 manifest in today's schema: target from `kv_cache`, user_inputs from its inputs."""
    target = TARGET_DECODER if manifest.get("kv_cache") else TARGET_ENCODER
    inputs = manifest.get("inputs")
    if isinstance(inputs, list) and all(isinstance(i, str) for i in inputs):  # the v1 decoder listed names only
        inputs = [{"name": n} for n in inputs]
    return {**manifest, "target": target, "user_inputs": _user_inputs_v1(manifest),
            **({"inputs": inputs} if isinstance(inputs, list) else {})}


# --------------------------------------------------------------------------------------------- read / write

def _check_version(mpath: Path, manifest: dict):
    version = manifest.get("format_version", 1)  # absent: bundles written before the key existed
    if version not in READABLE_VERSIONS:
        raise BundleError(f"{mpath}: format_version {version!r} is not one this edge-lorax reads "
                          f"({', '.join(map(str, READABLE_VERSIONS))}); re-export the bundle with this edge-lorax")


def _check_manifest(mpath: Path, manifest: dict):
    check_types(mpath, manifest, _TYPES)
    check_types(mpath, manifest.get("kv") or {}, _KV_TYPES)
    required = REQUIRED + TARGET_REQUIRED.get(manifest.get("target"), ())
    missing = next((k for k in required if k not in manifest), None)
    missing = missing or next((f"kv.{k}" for k in _KV_TYPES if "kv" in manifest and k not in manifest["kv"]), None)
    if missing is not None:
        raise BundleError(f"{mpath}: no {missing!r} key; {FIX}")
    if manifest["kind"] != names.BUNDLE_KIND or manifest["target"] not in TARGETS:
        raise BundleError(f"{mpath}: kind {manifest['kind']!r}, target {manifest['target']!r} is not an edge-lorax "
                          f"bundle of a known target ({', '.join(TARGETS)}); {FIX}")
    if not manifest["fingerprint"]:
        raise BundleError(f"{mpath}: an empty fingerprint, so no user could be checked against it; {FIX}")
    _check_files(mpath, manifest["files"])
    _check_user_inputs(mpath, manifest)


def read_manifest(folder) -> dict:
    """manifest.json of a bundle folder, checked and in today's schema (a version-1 manifest is upgraded in memory).
    BundleError (one line naming the file and the fix) for a missing, unreadable or ill-typed manifest, an unknown
    version or target, an empty fingerprint, a path that leaves the folder or malformed user_inputs."""
    mpath = manifest_path(folder)
    if not mpath.is_file():
        raise BundleError(f"{folder}: not a bundle folder (no {names.BUNDLE_MANIFEST}); create one with `edge-lorax export`")
    manifest = read_json_object(mpath, FIX, BundleError)
    check_types(mpath, manifest, {"format_version": (int,)})
    _check_version(mpath, manifest)
    if manifest.get("format_version", 1) == 1:
        manifest = _upgrade_v1(manifest)
    _check_manifest(mpath, manifest)
    return manifest


def write_manifest(folder, manifest: dict) -> Path:
    """manifest.json (sorted keys, indent 1, no times: the same inputs give the same bytes), written atomically.
    The writer's own checks are the reader's: a manifest that would not read back is a ValueError (a bug)."""
    manifest = {**manifest, "kind": names.BUNDLE_KIND, "format_version": MANIFEST_VERSION}
    mpath = manifest_path(folder)
    try:
        _check_manifest(mpath, manifest)
    except BundleError as e:
        raise ValueError(f"an exporter wrote an invalid manifest: {e}") from e
    with atomic_file(mpath) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return mpath


def check_target(folder, manifest: dict, targets: tuple, fix: str):
    """Refuse a bundle of a target the caller does not serve: one line naming the folder, its target and `fix`."""
    if manifest["target"] not in targets:
        raise BundleError(f"{folder}: a {manifest['target']} bundle ({manifest.get('task')}); {fix}")


def make_user_inputs(specs) -> list:
    """user_inputs entries from (name, shape, dtype) triples, in the given (binding) order; all optional inputs."""
    return [{"name": n, "shape": list(s), "dtype": d, "default": True} for n, s, d in specs]

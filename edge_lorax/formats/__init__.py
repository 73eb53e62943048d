"""The formats layer: names, errors, atomic writes and every file edge-lorax reads or writes (PEFT adapter folders,
the subspace folder, user files) with their validators. numpy, safetensors and onnxruntime's AdapterFormat only:
no torch, no ONNX graph tooling, no other part of the package.

Front door: one module per file (or concept), each named in `__all__` (`import edge_lorax.formats` itself imports
none of them):

  names          every name: inputs, files, tasks, format versions
  errors         InputError and its kinds, the one error type a refusal raises
  atomic         check_output, atomic_file, atomic_dir: outputs written whole or not at all
  peft           read_adapter, write_adapter: PEFT LoRA folders
  subspace       read_subspace, write_subspace: the subspace folder and its fingerprint
  user           User, read_user, write_user, conform_inputs: user files and the one validator
  onnx_adapter   read_onnx_adapter, write_onnx_adapter: ONNX Runtime's .onnx_adapter user files
  sources        read_sources, write_sources: a subspace's projected source adapters
  tasks          read_task, Task, Split: task files and seeded splits
  bundle         read_manifest, write_manifest: a bundle's manifest.json
  architectures  the per-model-type table

The other modules serve these: jsonfile, safetensors_file, synthetic (random users for tests and the bench),
tokenizer_files.
"""

__all__ = ["architectures", "atomic", "bundle", "errors", "names", "onnx_adapter", "peft", "sources", "subspace", "tasks",
           "user"]

"""The formats layer: names, errors, atomic writes and every file edge-lorax reads or writes (PEFT adapter folders,
the subspace folder, user files) with their validators. numpy, safetensors and onnxruntime's AdapterFormat only:
no torch, no ONNX graph tooling, no other part of the package.
"""

"""The builder (host, torch): PEFT adapters in, subspace, projection, coefficient training, PEFT adapters out.

Imports torch, transformers and peft inside its modules; knows nothing of ONNX (tests/test_architecture.py).
"""

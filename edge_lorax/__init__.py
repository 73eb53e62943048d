"""edge-lorax: EigenLoRAx subspaces built from PEFT LoRA adapters, users as coefficients, ONNX Runtime on the edge."""

__version__ = "0.1.0"

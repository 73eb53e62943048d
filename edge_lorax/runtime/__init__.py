"""The on-device runtime, serving only: numpy, onnxruntime, tokenizers and edge_lorax.formats — never torch,
transformers, peft, onnx or the builder, not even when a function is called (tests/test_architecture.py).

Front door, all in `__all__`: open_bundle -> Bundle (one session, thread-safe); load_user -> LoadedUser (validated at
load time, preloaded arrays); run_arrays / run_mixed / predict run them; predict_file (`edge-lorax run`) and
personalize_file (`edge-lorax personalize`) do a whole command's job in one call. Decoder bundles: the module
runtime.llm, load_llm (`edge-lorax generate`; onnxruntime-genai, the llm extra). Benchmarks live in edge_lorax.bench.
"""

from edge_lorax.runtime.bundle import PROFILES, Bundle, BundleError, SessionConfig, open_bundle
from edge_lorax.runtime.infer import Prediction, encode, predict, predict_file, run_adapter, run_arrays, run_mixed
from edge_lorax.runtime.personalize import FitConfig, personalize_file
from edge_lorax.runtime.users import LoadedUser, UserError, load_user, make_user

__all__ = ["PROFILES", "Bundle", "BundleError", "SessionConfig", "open_bundle", "Prediction", "encode", "predict",
           "predict_file", "run_adapter", "run_arrays", "run_mixed", "LoadedUser", "UserError", "load_user", "make_user",
           "FitConfig", "personalize_file"]

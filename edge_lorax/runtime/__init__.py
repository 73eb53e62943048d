"""The on-device runtime: numpy, onnxruntime and tokenizers only — never torch or transformers.

open_bundle -> Bundle (one session, thread-safe); load_user -> User (validated at load time, preloaded OrtValues);
run_arrays / run_mixed / predict run them. bench / measure / graphs are the benchmark's tooling.
"""

from edge_lorax.runtime.bundle import PROFILES, Bundle, BundleError, SessionConfig, open_bundle
from edge_lorax.runtime.infer import Prediction, encode, predict, predict_file, run_adapter, run_arrays, run_mixed
from edge_lorax.runtime.users import User, UserError, load_user, make_user

__all__ = ["PROFILES", "Bundle", "BundleError", "SessionConfig", "open_bundle", "Prediction", "encode", "predict",
           "predict_file", "run_adapter", "run_arrays", "run_mixed", "User", "UserError", "load_user", "make_user"]

"""Benchmarks: preparation of the compared graphs (from edge_lorax.export), worker processes, measurement, report
rendering and the one stamp (machine, commit, versions, command) every report carries. Not on the serving path.

Front door, named in `__all__` (`import edge_lorax.bench` itself imports neither): `run.run_bench` (the `edge-lorax
bench` command on an encoder bundle: prepare.prepare writes the compared graphs, one `python -m
edge_lorax.bench.workers` process per measurement, report.write_report), `llm.run_llm_bench` (the same command on a
decoder bundle: onnxruntime-genai's plain build of its base model against the bundle, one worker process per
(build, threads, round), llm_workers.py measuring, llm_report.write_llm_report; benchmarks/llm runs it too) and
`measure` (timing, statistics and `stamp()`, which benchmarks/ reports use).
"""

__all__ = ["llm", "measure", "run"]

"""Benchmarks: preparation of the compared graphs (from edge_lorax.export), worker processes, measurement, report
rendering and the one stamp (machine, commit, versions, command) every report carries. Not on the serving path.
"""

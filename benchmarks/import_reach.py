"""How much of the package the serving runtime reaches, imports inside functions counted (grimp, import-linter's graph).

    .venv/bin/python benchmarks/import_reach.py            # this tree
    PYTHONPATH=/path/to/old/checkout .venv/bin/python benchmarks/import_reach.py   # another checkout, run from /tmp

Prints the runtime's modules, the package modules they import directly or indirectly, and those of them that
import torch (the runtime's rule: none). Measures nothing else.
"""

import grimp


def main():
    graph = grimp.build_graph("edge_lorax", include_external_packages=True, cache_dir=None)
    runtime = {m for m in graph.modules if m.startswith("edge_lorax.runtime")}
    reach = set(runtime)
    for module in runtime:
        reach |= graph.find_upstream_modules(module)
    package = sorted(m for m in reach if m.startswith("edge_lorax"))
    torchy = [m for m in package if graph.direct_import_exists(importer=m, imported="torch")]
    print(f"runtime modules: {len(runtime)}; package modules reachable from them: {len(package)}")
    print(f"reachable modules that import torch: {len(torchy)} {torchy}")


if __name__ == "__main__":
    main()

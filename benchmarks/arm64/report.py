"""benchmarks/arm64/report.md + report.json from the check's per-bundle results (benchmarks/arm64/runs/*.json).

Usage: python benchmarks/arm64/report.py [--runs benchmarks/arm64/runs] [--notes benchmarks/arm64/notes.md]
One table per bundle: per arm64 core and variant, max |Δ| against x86, labels / tokens equal, exact match on both
sides for decoders, within tolerance or not; then the check's own cost (emulated wall time, never device speed) and
each run file's command, commit, host and qemu. The
notes file (findings written by hand, each with its command) is appended as it is. Does not run anything.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _row(cpu: str, r: dict) -> str:
    if "exact_match_x86" in r:
        return (f"| {cpu} | {r['variant']} | {r['max_abs_diff']:.3g} | {r['prompt_tokens_equal']} | "
                f"{r['task_answers_equal']} | {r['exact_match_x86']:.1f} | {r['exact_match_arm64']:.1f} | "
                f"{'yes' if r['ok'] else '**no**'} |")
    labels = "–" if r["labels_equal"] is None else ("yes" if r["labels_equal"] else "**no**")
    return f"| {cpu} | {r['variant']} | {r['max_abs_diff']:.3g} | {labels} | {r['tolerance']:g} | {'yes' if r['ok'] else '**no**'} |"


def bundle_section(res: dict) -> list:
    decoder = res["target"] == "genai-decoder"
    head = (["| core | precision | max abs Δ prefill logits | free prompts: greedy tokens equal | task answers token-equal | "
             "exact match x86 (%) | exact match arm64 (%) | within tolerance |", "|---|---|---|---|---|---|---|---|"]
            if decoder else ["| core | variant | max abs Δ outputs | labels equal | tolerance | within |",
                             "|---|---|---|---|---|---|"])
    what = (f"{res['inputs']['prompts']} free chat prompts (24 new tokens) and the first {res['inputs']['texts']} test rows "
            f"of `{res['inputs']['task']}`" if decoder else f"{res['inputs']['texts']} texts (the demo's 4 sentences, 28 NYT sentences)")
    lines = [f"### `{res['bundle']}` ({res['target']}, {res['task']}, {res['mode']})", "", f"Inputs: {what}.", ""] + head
    for cpu, c in res["cpus"].items():
        lines += [_row(cpu, r) for r in c["rows"]]
    cost = ", ".join(f"{cpu} {c['probe_seconds']:.0f} s" for cpu, c in res["cpus"].items())
    return lines + ["", "Cost of the check (probe seconds, emulated, summed over a core's resumed runs and shards; the machine "
                        f"was shared): x86 {res['x86']['probe_seconds']:.1f} s; "
                        f"{cost}.", "", "Runs: " + "; ".join(res["runs"]) + ".", ""]


def made_with(run: Path, res: dict) -> str:
    """A run file's provenance: the command, commit, host, qemu and times the check stamped, or (runs from before it
    stamped them) the commit that added the file."""
    if "made_with" in res:
        m = res["made_with"]
        return (f"`{run.name}`: `{m['command']}`, commit {m['git_commit'][:10]}{'+dirty' * m['git_commit'].endswith('+dirty')}, "
                f"{m['machine']['cpu']} ({m['machine']['usable_cores']} cores), {m['qemu']}, {m['started']} – {m['finished']}")
    added = subprocess.run(["git", "-C", str(run.parent), "log", "--diff-filter=A", "--format=%h", "-1", "--", run.name],
                           capture_output=True, text=True).stdout.strip()
    return f"`{run.name}`: added in commit {added or '(not committed)'}"


def grouped(results: list) -> list:
    """Runs of one bundle on the same inputs whose x86 side agrees (a core per run: runs that outlive a session) as
    one result, cores in run order; `results`: (run file, result) pairs."""
    groups = {}
    for run, res in results:
        key = json.dumps([res["bundle"], res["inputs"], res["x86"].get("exact_match")], sort_keys=True)
        if key in groups:
            groups[key]["cpus"].update(res["cpus"])
            groups[key]["runs"].append(made_with(run, res))
        else:
            groups[key] = {**res, "cpus": dict(res["cpus"]), "runs": [made_with(run, res)]}
    return list(groups.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=HERE / "runs")
    p.add_argument("--notes", type=Path, default=HERE / "notes.md")
    a = p.parse_args(argv)
    results = [(f, json.loads(f.read_text())) for f in sorted(a.runs.glob("*.json"))]
    if not results:
        print(f"no results in {a.runs}; run scripts/check-arm64.sh ... --json {a.runs}/NAME.json first", file=sys.stderr)
        return 2
    lines = ["# arm64 check: the same inputs on x86 and on emulated arm64 cores", "",
             "Made by `scripts/check-arm64.sh BUNDLE USER --cpus ... --json benchmarks/arm64/runs/NAME.json` per bundle "
             "(bundles: `benchmarks/arm64/prepare.sh`), then `python benchmarks/arm64/report.py`. arm64 runs are "
             "qemu-user 7.2 (Debian 12) emulating each core (`QEMU_CPU`) in an arm64 Debian 12 root filesystem with "
             "the runtime's aarch64 wheels (the host's versions); x86 is the host's .venv. One ONNX Runtime thread "
             "both sides. Emulated time says what the check costs, not how fast a device is.", ""]
    for res in grouped(results):
        lines += bundle_section(res)
    if a.notes.is_file():
        lines += [a.notes.read_text().rstrip(), ""]
    (HERE / "report.md").write_text("\n".join(lines))
    (HERE / "report.json").write_text(json.dumps([res for _, res in results], indent=1, sort_keys=True) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

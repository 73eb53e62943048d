"""The arm64 check's host side: the same inputs through a bundle on x86 and on each emulated arm64 core, compared.

scripts/check-arm64.sh prepares the arm64 Debian root filesystem (qemu-user-static under binfmt_misc, the torch-free
runtime installed from PyPI's aarch64 wheels) and then runs this file. For each core named in --cpus it runs
probe.py inside that root filesystem with QEMU_CPU=<core> (its own mount namespace: /proc, /dev, the bundle and an
exchange folder bound in, and a small arm64 /proc/cpuinfo for that core bound over /proc's: qemu 7.2 passes the
host's x86 one through and onnxruntime's cpuinfo then crashes), runs the same probe on x86 with this interpreter, and
compares per variant:

- encoder: max |Δ| of the outputs (logits or features) and whether the labels (argmax) are equal;
- decoder: max |Δ| of the prefill logits of the free prompts, whether their greedy continuations are equal, how many
  task answers are token-equal, and the task's exact match on both sides (an int4 divergence is judged by accuracy);
- ExecuTorch bundle (`--target executorch`): the program's logits (`pte`, or `pte_int8` for an int8 program) as an
  encoder variant, run in the root
  filesystem's second venv (/opt/venv-et: torch + executorch, as ExecuTorch's binding imports torch) with a minimal
  /sys (cpu/present, possible, online) for XNNPACK's cpuinfo.

A variant fails when it differs beyond what its precision explains (TOLERANCE below, written into the result): one
line on stderr per failure and exit status 1. Results: a JSON file (--json). Timings are the check's own cost
(wall seconds per side, emulated), never device speed.
Usage: scripts/check-arm64.sh BUNDLE USER [--cpus cortex-a53,cortex-a76] [--rows 200] [--json out.json] [--progress DIR]
                              [--shards K]
(--progress: each decoder probe's checkpoint mirrored to DIR while it runs and seeded from it, so a run that outlives
a machine resumes on the next one from a committed DIR; --shards: a decoder core's task rows over K probes at once,
rows i % K == j each, merged before the probe that completes the core.)
Does not build the root filesystem (the script does) or export bundles (edge-lorax export does).
"""

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from probe import load_rows, save_npz  # noqa: E402  (the probe's own checkpoint format)

from edge_lorax.bench.measure import finish, portable, stamp  # noqa: E402  (the stamp every report carries)
from edge_lorax.formats.atomic import atomic_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe.py")
ROOTFS_PROBE = "/opt/edge-lorax/benchmarks/arm64/probe.py"  # where check-arm64.sh installs the source
ROOTFS_PYTHON = "/opt/venv/bin/python"
DEPENDS = ("benchmarks/arm64", "scripts/check-arm64.sh", "edge_lorax")  # the code a result depends on (+dirty scope)
# ExecuTorch bundles: ExecuTorch's binding imports torch, so they run in a second venv (check-arm64.sh makes it) that
# also sees the runtime venv's packages (tokenizers, edge_lorax) after its own
ROOTFS_ET_PYTHON = "/opt/venv-et/bin/python"
ROOTFS_ET_PATH = "/opt/venv/lib/python3.11/site-packages"
CPUS = ("cortex-a53", "cortex-a76", "neoverse-n1", "a64fx", "max-sve128")
# --cpus names that are not one of qemu's models: the QEMU_CPU they stand for. max-sve128: qemu's max core with SME off
# and SVE2 at 128 bits, the instruction set of Armv9 phone cores (Cortex-A710 / X2 and later: SVE2 at 128 bits, i8mm,
# dotprod, bf16); qemu 7.2's default 512-bit SVE (max, a64fx) emulates this decoder ~8x slower with the same logits
QEMU_MODELS = {"max-sve128": "max,sme=off,sve-default-vector-length=16"}
# /proc/cpuinfo lines per core: implementer, part and the Linux feature names of what qemu 7.2 emulates for it
CPUINFO = {
    "cortex-a53": ("0x41", "0xd03", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("0x41", "0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                                    "lrcpc dcpop asimddp"),
    "neoverse-n1": ("0x41", "0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                                     "lrcpc dcpop asimddp ssbs"),
    "a64fx": ("0x46", "0x001", "fp asimd evtstrm sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm fcma dcpop sve"),
    "max-sve128": ("0x00", "0x051", "fp asimd aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
                                    "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm ilrcpc flagm sb paca pacg dcpodp sve2 "
                                    "sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                                    "svebf16 i8mm bf16 rng bti mte"),  # qemu's max: implementer 0 ("software"), part 'Q'
}
# What a variant may differ by between two CPUs (instruction sets, kernels and summation orders differ):
# fp32 graphs: float32 rounding; int8 / int4: the activation quantisation kernels differ (x86 u8s8 vs arm s8s8, dot
# product instructions or not), so their outputs move by up to a quantisation step while labels must hold.
TOLERANCE = {"fp32": 1e-4, "fused": 1e-4, "per_example": 1e-4, "int8": 0.1, "pte": 1e-4, "pte_int8": 0.1}
DECODER_LOGITS = {"fp32": 1e-3, "int8": 0.5, "int4": None}  # None: judged by task accuracy only
EXACT_MATCH_POINTS = 2.5  # largest |Δ exact match| in points (of 100) an int4 bundle may show between two CPUs
ENCODER_TEXTS = 32
MIRROR_SECONDS = 30  # how often --progress copies a running probe's checkpoint
FREE_PROMPTS = ("What is the capital of France? Answer in one word.", "Write one sentence about the sea.",
                "List three colours.")


def encoder_inputs() -> dict:
    """The demo's four sentences and the first NYT sentences of data/vader (32 texts)."""
    from edge_lorax.demo import SENTENCES

    rows = (ROOT / "data" / "vader" / "nyt.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = list(SENTENCES) + [r.split("\t", 2)[2] for r in rows[: ENCODER_TEXTS - len(SENTENCES)]]
    return {"texts": texts}


def decoder_inputs(task: str, rows: int) -> dict:
    """The free prompts and the first `rows` test rows of `task`, as benchmarks/decoder caps them (seeded split)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "decoder"))
    from common import capped_task

    t = capped_task(task)
    return {"prompts": list(FREE_PROMPTS), "max_new_tokens": 24, "task": task, "labels": list(t.labels),
            "texts": list(t.test.texts[:rows]), "targets": [int(x) for x in t.test.targets[:rows]]}


def cpuinfo(cpu: str) -> str:
    """A one-core arm64 /proc/cpuinfo for `cpu` (what onnxruntime's cpuinfo parses)."""
    implementer, part, features = CPUINFO[cpu]
    return (f"processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: {implementer}\n"
            "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: " + part + "\nCPU revision\t: 0\n\n")


def _sys_cpu(root: str, q) -> list:
    """A tmpfs /sys holding only cpu/present, possible and online ("0"): XNNPACK's cpuinfo reads them (without them
    ExecuTorch's XNNPACK backend fails to initialise), while the host's real /sys stays out (see the module docstring)."""
    cpu = q(root + "/sys/devices/system/cpu")
    return [f"mount -t tmpfs tmpfs {q(root + '/sys')}", f"mkdir -p {cpu}",
            *(f"echo 0 > {cpu}/{name}" for name in ("present", "possible", "online"))]


def arm64_command(rootfs: Path, cpu: str, bundle: Path, exchange: Path, args: list, pte: bool = False) -> list:
    """probe.py inside the root filesystem under QEMU_CPU=cpu, in a private mount namespace (mounts vanish with it);
    `pte`: with the ExecuTorch venv and a minimal /sys."""
    (exchange / f"cpuinfo-{cpu}").write_text(cpuinfo(cpu))
    r, q = str(rootfs), shlex.quote
    python = f"env PYTHONPATH={ROOTFS_ET_PATH} {ROOTFS_ET_PYTHON}" if pte else ROOTFS_PYTHON
    qemu_cpu = q(QEMU_MODELS.get(cpu, cpu))
    script = " && ".join([
        f"mount -t proc proc {q(r + '/proc')}", f"mount --bind {q(str(exchange / ('cpuinfo-' + cpu)))} {q(r + '/proc/cpuinfo')}",
        f"mount --rbind /dev {q(r + '/dev')}", *(_sys_cpu(r, q) if pte else []),
        f"mkdir -p {q(r + '/mnt/bundle')} {q(r + '/mnt/x')}",
        f"mount --bind -o ro {q(str(bundle))} {q(r + '/mnt/bundle')}", f"mount --bind {q(str(exchange))} {q(r + '/mnt/x')}",
        f"exec env -i QEMU_CPU={qemu_cpu} PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /usr/sbin/chroot {q(r)} {python} {ROOTFS_PROBE} "
        + " ".join(q(a) for a in args)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def progress_key(bundle: Path, user: Path, inputs: dict) -> str:
    """What --progress names a decoder checkpoint by (progress_file): a hash of what the rows
    depend on (every file of the bundle, the user, the inputs), never a local path: a rebuild on another machine
    finds it when it computes the same (its .onnx files may differ only in producer_version, the exporting commit),
    any other build starts afresh."""
    import onnx

    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode() + user.read_bytes())
    for f in sorted(f for f in bundle.iterdir() if f.is_file()):
        data = f.read_bytes()
        if f.suffix == ".onnx":
            model = onnx.load_from_string(data)  # the graph only; its external data is hashed as its own file
            model.producer_version = ""
            data = model.SerializeToString()
        digest.update(f.name.encode() + data)
    return digest.hexdigest()[:12]


def progress_file(progress: Path, bundle: Path, cpu: str, key: str) -> Path:
    """`cpu`'s decoder checkpoint under --progress: <bundle>-<core>-<progress_key>.rows.npz."""
    return progress / f"{bundle.name}-{cpu}-{key}.rows.npz"


def _mirror(src: Path, dst: Path) -> None:
    """Copy a newer checkpoint `src` over `dst` atomically."""
    if src.is_file() and (not dst.is_file() or src.stat().st_mtime > dst.stat().st_mtime):
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(dst) as tmp:
            shutil.copyfile(src, tmp)


def _wait(probes: list, tick) -> None:
    """Wait for every probe, calling tick() every MIRROR_SECONDS while any runs and once after the last stops."""
    for probe in probes:
        while True:
            try:
                probe.wait(timeout=MIRROR_SECONDS)
                break
            except subprocess.TimeoutExpired:
                tick()
    tick()


def _seed(checkpoint: Path, mirror: Path, log) -> None:
    """Start a probe from --progress's checkpoint of this build when its exchange has none."""
    if mirror.is_file() and not checkpoint.is_file():
        shutil.copyfile(mirror, checkpoint)
        log(f"resuming from {mirror}")
    elif not mirror.is_file():
        others = ", ".join(o.name for o in sorted(mirror.parent.glob(mirror.name.rsplit("-", 1)[0] + "-*.rows.npz")))
        log(f"no checkpoint of this build in {mirror.parent}" + (f" (other builds: {others})" if others else ""))


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])


def run_side(name: str, command: list, out: Path, log, mirror: Path = None) -> float:
    """Run one probe (skipped when its output exists: reruns resume); its wall seconds (0 when skipped). `mirror`: a
    copy of the probe's checkpoint (OUT.rows.npz) kept up to date while it runs, seeding it when absent, and removed
    once OUT holds every row."""
    if out.is_file():
        log(f"{name}: reusing {out.name}")
        return 0.0
    checkpoint = out.with_suffix(".rows.npz")
    if mirror is not None:
        _seed(checkpoint, mirror, lambda m: log(f"{name}: {m}"))
    log(f"{name}: running")
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as err:
        probe = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT)
        _wait([probe], lambda: mirror is not None and _mirror(checkpoint, mirror))
    if probe.returncode != 0:
        raise RuntimeError(f"{name}: the probe failed (exit {probe.returncode}): {_tail(out.with_suffix('.log'))}")
    if mirror is not None:
        mirror.unlink(missing_ok=True)
    return time.perf_counter() - start


def merge_rows(base: dict, parts: list) -> dict:
    """`base` (task_tokens_<i>, seconds_spent) with the rows of the shard checkpoints `parts` added and their
    seconds_spent summed on top; a row two of them hold must be equal (RuntimeError naming the file)."""
    merged = dict(base)
    for part in (p for p in parts if p.is_file()):
        rows = load_rows(part)
        merged["seconds_spent"] = np.array(float(merged.get("seconds_spent", 0.0)) + float(rows.pop("seconds_spent", 0.0)))
        for k, v in rows.items():
            if k in merged and not np.array_equal(merged[k], v):
                raise RuntimeError(f"{part}: {k} differs from the same row in another checkpoint")
            merged[k] = v
    return merged


def _merge_into(merged: Path, base: dict, parts: list, mirror: Path = None) -> None:
    save_npz(merged, merge_rows(base, parts))
    if mirror is not None:
        _mirror(merged, mirror)


def run_shards(name: str, commands: list, out: Path, log, mirror: Path = None) -> None:
    """A decoder's task rows split over len(commands) probes at once (probe.py --shard=j/K, one host core each), their
    checkpoints merged into OUT.rows.npz (and mirrored) as they go; run_side's probe then finds every row done."""
    merged, parts = out.with_suffix(".rows.npz"), [out.with_suffix(f".shard{j}.rows.npz") for j in range(len(commands))]
    if mirror is not None:
        _seed(merged, mirror, lambda m: log(f"{name}: {m}"))
    previous = load_rows(merged)  # a stopped run's shard rows join it; their seconds are in it already
    base = {**merge_rows(previous, parts), "seconds_spent": previous.get("seconds_spent", np.array(0.0))}
    for part in parts:  # each shard starts from every row done, its own seconds at 0
        save_npz(part, {**base, "seconds_spent": np.array(0.0)})
    log(f"{name}: running {len(commands)} shards")
    logs = [open(part.with_suffix(".log"), "w") for part in parts]
    probes = [subprocess.Popen(c, stdout=f, stderr=subprocess.STDOUT) for c, f in zip(commands, logs)]
    _wait(probes, lambda: _merge_into(merged, base, parts, mirror))
    for f in logs:
        f.close()
    for j, p in enumerate(probes):
        if p.returncode != 0:
            raise RuntimeError(f"{name}: shard {j} failed (exit {p.returncode}): {_tail(parts[j].with_suffix('.log'))}")


def compare_encoder(ref: dict, got: dict) -> list:
    """Per variant: max |Δ| of the outputs, labels equal (argmax of logits), within tolerance."""
    rows = []
    for key in sorted(k for k in ref if k.endswith(".out")):
        variant, a, b = key[:-4], ref[key], got[key]
        diff = float(np.abs(a.astype(np.float64) - b).max())
        labels = bool((a.argmax(-1) == b.argmax(-1)).all()) if a.ndim == 2 and a.shape[-1] > 1 else None
        ok = diff <= TOLERANCE[variant] and labels is not False
        rows.append({"variant": variant, "max_abs_diff": diff, "labels_equal": labels, "tolerance": TOLERANCE[variant],
                     "ok": ok})
    return rows


def compare_decoder(variant: str, ref: dict, got: dict) -> list:
    """max |Δ| of the prefill logits, free prompts' greedy tokens equal, task answers token-equal, exact match."""
    diff = float(np.abs(ref["prompt_logits"].astype(np.float64) - got["prompt_logits"]).max())
    prompts = [k for k in ref if k.startswith("prompt_tokens_")]
    tasks = [k for k in ref if k.startswith("task_tokens_")]
    same = lambda k: np.array_equal(ref[k], got[k])  # noqa: E731
    first = [_first_difference(ref[k], got[k]) for k in prompts if not same(k)]
    em_ref, em_got = 100 * float(ref["task_exact"].mean()), 100 * float(got["task_exact"].mean())
    tol = DECODER_LOGITS[variant]
    ok = abs(em_ref - em_got) <= EXACT_MATCH_POINTS if tol is None else (diff <= tol and not first)
    return [{"variant": variant, "max_abs_diff": diff, "prompt_tokens_equal": f"{len(prompts) - len(first)}/{len(prompts)}",
             "first_divergence": min(first) if first else None, "task_answers_equal": f"{sum(map(same, tasks))}/{len(tasks)}",
             "exact_match_x86": em_ref, "exact_match_arm64": em_got, "rows": len(tasks), "tolerance": tol, "ok": ok}]


def _first_difference(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def bundle_variant(manifest: dict) -> str:
    """A decoder bundle's precision (fp32, int8, int4)."""
    return manifest.get("precision") or "fp32"


def arm64_side(cpu: str, command, out: Path, log, shards: int = 1, mirror: Path = None) -> float:
    """One core's probe into `out` (`command(out_name, extra_args)` runs it), a decoder's rows split over `shards`
    probes at once first when shards > 1; wall seconds of both (0 when `out` exists)."""
    start = time.perf_counter()
    if shards > 1 and not out.is_file():
        run_shards(f"arm64 {cpu}", [command(f"{cpu}.shard{j}.npz", [f"--shard={j}/{shards}"]) for j in range(shards)],
                   out, log, mirror)
    reused = not run_side(f"arm64 {cpu}", command(out.name), out, log, mirror)
    return 0.0 if reused else time.perf_counter() - start


def check(bundle: Path, user: Path, cpus: list, rootfs: Path, work: Path, rows: int, task: str, log,
          progress: Path = None, shards: int = 1) -> dict:
    """Probe x86 and each arm64 core (cached per side under `work`; `progress`: decoder checkpoints mirrored there;
    `shards`: a decoder core's task rows over that many probes at once), compare; the result dict."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    decoder = manifest["target"] == "genai-decoder"
    inputs = decoder_inputs(task, rows) if decoder else encoder_inputs()
    key = hashlib.sha256(json.dumps([manifest["fingerprint"], str(bundle.resolve()), user.read_bytes().hex()[:4096],
                                     inputs], sort_keys=True).encode()).hexdigest()[:12]
    exchange = work / f"{bundle.name}-{key}"
    exchange.mkdir(parents=True, exist_ok=True)
    (exchange / "inputs.json").write_text(json.dumps(inputs))
    (exchange / ("user" + user.suffix)).write_bytes(user.read_bytes())
    args = lambda b, x, out: [b, f"{x}/user{user.suffix}", f"{x}/inputs.json", f"{x}/{out}"]  # noqa: E731
    seconds = {"x86": run_side("x86", [sys.executable, str(PROBE), *args(str(bundle), str(exchange), "x86.npz")],
                               exchange / "x86.npz", log)}
    key = progress_key(bundle, user, inputs) if progress and decoder else None
    for cpu in cpus:
        command = lambda out, extra=(), cpu=cpu: arm64_command(  # noqa: E731
            rootfs, cpu, bundle, exchange, [*args("/mnt/bundle", "/mnt/x", out), *extra], manifest["target"] == "executorch")
        seconds[cpu] = arm64_side(cpu, command, exchange / f"{cpu}.npz", log, shards if decoder else 1,
                                  key and progress_file(progress, bundle, cpu, key))
    ref = dict(np.load(exchange / "x86.npz"))
    results = {}
    for cpu in cpus:
        got = dict(np.load(exchange / f"{cpu}.npz"))
        rows_ = compare_decoder(bundle_variant(manifest), ref, got) if decoder else compare_encoder(ref, got)
        results[cpu] = {"rows": rows_, "probe_seconds": float(got["seconds"]), "wall_seconds": seconds[cpu]}
    return {"bundle": bundle.name, "target": manifest["target"], "task": manifest.get("task"), "mode": manifest.get("mode"),
            "inputs": {"texts": len(inputs["texts"]), **({"task": task, "prompts": len(FREE_PROMPTS)} if decoder else {})},
            "x86": {"probe_seconds": float(ref["seconds"]), "wall_seconds": seconds["x86"],
                    **({"exact_match": 100 * float(ref["task_exact"].mean())} if decoder else {})},
            "cpus": results}


def qemu_version() -> str:
    """The first line of `qemu-aarch64-static --version` ("unknown" without it): what emulated the cores."""
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def made_with(result: dict, st: dict) -> dict:
    """`result` with what made it: the project's report stamp `st` (command, commit, machine, versions; taken before
    the probes ran, so a commit made during an hours-long run does not claim it) finished now, and the qemu."""
    return {**result, "made_with": {**finish(st), "qemu": qemu_version()}}


def failures(result: dict) -> list:
    """One line per variant and core that differs beyond its tolerance."""
    out = []
    for cpu, r in result["cpus"].items():
        for row in r["rows"]:
            if not row["ok"]:
                what = (f"exact match {row['exact_match_arm64']:.1f} vs x86 {row['exact_match_x86']:.1f}"
                        if "exact_match_x86" in row else f"max |Δ| {row['max_abs_diff']:.3g}, labels equal {row.get('labels_equal')}")
                out.append(f"{result['bundle']} {row['variant']} on {cpu}: {what} (tolerance {row['tolerance']})")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("user", type=Path)
    p.add_argument("--cpus", default="cortex-a53,cortex-a76,neoverse-n1,a64fx")
    p.add_argument("--rootfs", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                   / "edge-lorax" / "arm64-check")
    p.add_argument("--rows", type=int, default=200, help="decoder task rows (test split)")
    p.add_argument("--task", default="vader:tweets-binary", help="decoder task the user answers")
    p.add_argument("--json", type=Path)
    p.add_argument("--shards", type=int, default=1, choices=range(1, 17), metavar="K", help="decoder task rows of each core over this many emulated "
                   "probes at once (one host core each; the answers do not change)")
    p.add_argument("--progress", type=Path, help="folder that mirrors each decoder probe's checkpoint (every 5 rows) while it "
                   "runs (commit it to resume an hours-long emulated run on another machine)")
    a = p.parse_args(argv)
    cpus = [c.strip() for c in a.cpus.split(",") if c.strip()]
    unknown = [c for c in cpus if c not in CPUINFO]
    if unknown or not (a.bundle / "manifest.json").is_file() or not a.user.is_file():
        print(f"check-arm64: {'unknown --cpus ' + ','.join(unknown) + ' (known: ' + ','.join(CPUS) + ')' if unknown else ''}"
              f"{'' if (a.bundle / 'manifest.json').is_file() else f' {a.bundle}: not a bundle folder'}"
              f"{'' if a.user.is_file() else f' {a.user}: no such user file'}", file=sys.stderr)
        return 2
    log = lambda m: print(f"[check-arm64] {a.bundle.name}: {m}", file=sys.stderr, flush=True)  # noqa: E731
    st = stamp("scripts/check-arm64.sh " + shlex.join(argv if argv is not None else sys.argv[1:]), dirty_paths=DEPENDS)
    result = check(a.bundle.resolve(), a.user.resolve(), cpus, a.rootfs, a.work, a.rows, a.task, log, a.progress, a.shards)
    if a.json:
        with atomic_file(a.json) as tmp:
            tmp.write_text(portable(json.dumps(made_with(result, st), indent=1, sort_keys=True)).replace(str(Path.home()), "~") + "\n")
    print(json.dumps(summary(result), indent=1))
    bad = failures(result)
    for line in bad:
        print(f"check-arm64: MISMATCH {line}", file=sys.stderr)
    return 1 if bad else 0


def summary(result: dict) -> dict:
    """{core: [variant rows]} without the costs: what stdout shows."""
    return {cpu: r["rows"] for cpu, r in result["cpus"].items()}


if __name__ == "__main__":
    sys.exit(main())

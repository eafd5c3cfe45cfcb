"""Turn bench.py's results into docs/benchmarks.md and docs/benchmarks.png.

Usage: python benchmarks/report.py [--out bench-out] [--docs docs] [--elapsed SECONDS]
Figures are medians over the repeats; every ratio is to eager construction measured in the same
run and the same venv (colossalai: its own venv's eager, same library versions as it runs with).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import MODELS

MIB = 2**20
COMMAND = "bash benchmarks/run.sh"
SYSTEM_LABEL = {
    "eager": "eager (baseline)",
    "dormant": "dormant",
    "dormant-fast": 'dormant, `rng="fast"`',
    "meta": "meta + to_empty + init",
    "accelerate": "accelerate",
    "peer-eager": "eager, transformers 4.51 (peer venv)",
    "colossalai": "colossalai 0.5.0",
}
# Tables that other scripts of run.sh write into the output folder: (title, file, command).
EXTRA_TABLES = [
    ("Sharded: per-rank peak and time of a boost", "sharded.md",
     "python benchmarks/sharded_boost.py --out bench-out/sharded.md"),
    ("from_pretrained: lazy load against the library's own", "from_pretrained.md",
     "python benchmarks/from_pretrained.py --out bench-out/from_pretrained.md"),
    ("Scale: one rank of 1 to 1,024 on the fake process group", "scale.md",
     "python benchmarks/scale.py --out bench-out/scale.md"),
]  # fmt: skip


def load(out: Path) -> tuple[dict[tuple[str, str, str], list[dict[str, Any]]], dict[str, Any]]:
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    envs: dict[str, Any] = {}
    with open(out / "results.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "env":
                envs[r["env"]] = r
            else:
                peer_eager = (r["env"], r["system"]) == ("peer", "eager")
                system = "peer-eager" if peer_eager else r["system"]
                runs[(r["model"], system, r["env"])].append(r)
    return runs, envs


def med(rs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rs if key in r]
    return statistics.median(vals) if vals else None


def equal_count(out: Path, env: str, system: str, model: str) -> tuple[int, int] | None:
    base = out / "digests" / f"{env}-eager-{model}.json"
    mine = out / "digests" / f"{env}-{system}-{model}.json"
    if not base.exists() or not mine.exists():
        return None
    a, b = json.loads(base.read_text()), json.loads(mine.read_text())
    return sum(b.get(k) == v for k, v in a.items()), len(a)


def cross_version_equal(out: Path, model: str) -> tuple[int, int] | None:
    a = out / "digests" / f"main-eager-{model}.json"
    b = out / "digests" / f"peer-eager-{model}.json"
    if not a.exists() or not b.exists():
        return None
    da, db = json.loads(a.read_text()), json.loads(b.read_text())
    return sum(db.get(k) == v for k, v in da.items()), len(da)


def fmt_s(x: float | None) -> str:
    return "" if x is None else (f"{x:.3f}" if x < 1 else f"{x:.2f}")


def fmt_ratio(x: float | None, base: float | None, suffix: str = "") -> str:
    if x is None or not base:
        return "—"
    r = x / base
    return (f"{r:.2f}x" if r >= 0.095 else f"{r:.1g}x" if r >= 0.0005 else "0x") + suffix


def fmt_mib(x: float | None) -> str:
    return "" if x is None else f"{x / MIB:,.0f}"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB memory, no GPU; "
        f"Linux {platform.release()}"
    )


def build_rows(out: Path, runs: dict, model: str) -> tuple[list[list[str]], dict[str, Any]]:
    """Table rows for one model, and the figures the plot needs."""
    spec = MODELS[model]
    rows: list[list[str]] = []
    fig: dict[str, Any] = {}
    main_eager = runs.get((model, "eager", "main"), [])
    peer_eager = runs.get((model, "peer-eager", "peer"), [])
    meta_runs = runs.get((model, "meta", "main"), [])

    def baseline(system: str) -> tuple[float | None, float | None, str]:
        if spec.full:
            rs = peer_eager if system == "colossalai" else main_eager
            return med(rs, "total_s"), med(rs, "peak"), ""
        return med(meta_runs, "construct_s"), None, " meta"

    def eq(env: str, system: str) -> str:
        c = equal_count(out, env, system, model)
        return "" if c is None else f"{c[0]}/{c[1]}"

    def row(system: str, phase: str, rs: list, t_key: str, p_key: str, equal: str = "",
            lazy: str = "") -> None:  # fmt: skip
        bt, bp, suffix = baseline(system)
        t, p = med(rs, t_key), med(rs, p_key)
        rows.append(
            [SYSTEM_LABEL[system], phase, str(len(rs)), fmt_s(t), fmt_ratio(t, bt, suffix),
             fmt_mib(p), fmt_ratio(p, bp), equal, lazy]
        )  # fmt: skip

    if spec.full:
        row("eager", "construct", main_eager, "total_s", "peak", "(reference)")
        fig["eager"] = (med(main_eager, "total_s"), med(main_eager, "peak"))
    else:
        params = med(runs.get((model, "dormant", "main"), []), "param_bytes")
        need = f"{params / 2**30:.0f} GiB" if params else "more than the machine has"
        rows.append(
            [SYSTEM_LABEL["eager"], f"not run: fp32 weights alone are {need} > 24 GiB",
             "0", "", "", "", "", "", ""]
        )  # fmt: skip

    for system, env in (("dormant", "main"), ("dormant-fast", "main"), ("meta", "main"),
                        ("accelerate", "main"), ("peer-eager", "peer"),
                        ("colossalai", "peer")):  # fmt: skip
        rs = runs.get((model, system, env), [])
        err = next((r["error"] for r in rs if "error" in r), None)
        rs = [r for r in rs if "error" not in r]
        if err:
            rows.append([SYSTEM_LABEL[system], f"**fails**: {err}", "1", "", "", "", "", "", ""])
            continue
        if not rs:
            continue
        if system == "peer-eager":
            t, p = med(rs, "total_s"), med(rs, "peak")
            bt, bp = med(main_eager, "total_s"), med(main_eager, "peak")
            rows.append(
                [SYSTEM_LABEL[system], "construct", str(len(rs)), fmt_s(t),
                 fmt_ratio(t, bt, " of main eager"), fmt_mib(p), fmt_ratio(p, bp),
                 eq(env, "eager"), ""]
            )  # fmt: skip
            continue
        has_mat = spec.full and system != "accelerate"
        lazy = med(rs, "lazy_rate")
        lazy_s = "" if lazy is None else f"{lazy:.2%}"
        if system in ("dormant", "dormant-fast", "colossalai") and has_mat:
            row(system, "construct", rs, "construct_s", "construct_peak")
            row(system, "materialize", rs, "materialize_s", "materialize_peak")
            row(system, "construct + materialize", rs, "total_s", "peak", eq(env, system), lazy_s)
        elif system == "meta" and has_mat:
            row(system, "construct (meta)", rs, "construct_s", "construct_peak")
            row(system, "construct + to_empty + init", rs, "total_s", "peak", eq(env, system))
        else:
            row(system, "construct only", rs, "construct_s", "peak", "no values" if
                system in ("accelerate", "meta") else "")  # fmt: skip
        fig[system] = (med(rs, "total_s"), med(rs, "peak"), med(rs, "construct_s"))
    fig["peer-eager"] = (med(peer_eager, "total_s"), med(peer_eager, "peak"))
    return rows, fig


def rng_notes(runs: dict, models: list[str]) -> list[str]:
    """What exact mode does with random numbers, and what `rng="fast"` buys over it, measured."""
    notes = [
        "- dormant (exact): random draws that later model code overwrites (transformers: the",
        "  `init_weights` pass over each layer's own `reset_parameters`) are jumped over on",
        "  mt19937's stream, never drawn. Recording draws nothing; when the context exits, the",
        "  generator is moved to where eager construction leaves it (one jump, about 1-4 ms at",
        "  any distance).",
    ]
    ratios = []  # (model, median ratio, best-run ratio) of construct + materialize time
    for m in models:
        exact, fast = ([r["total_s"] for r in runs.get((m, s, "main"), []) if "error" not in r]
                       for s in ("dormant", "dormant-fast"))  # fmt: skip
        if MODELS[m].full and exact and fast:
            median = statistics.median(fast) / statistics.median(exact)
            ratios.append((MODELS[m].short, median, min(fast) / min(exact)))
    if ratios:
        lo, hi = min(r[1] for r in ratios), max(r[1] for r in ratios)
        per = ", ".join(f"{name} {r:.2f}x ({best:.2f}x)" for name, r, best in ratios)
        slower = [name for name, r, _ in ratios if r >= 1]
        notes.append(
            '- `rng="fast"` against exact dormant, construct + materialize time, fast / exact as'
            f" medians (fastest run of each in parentheses): {per}. Fast takes {lo:.2f}-{hi:.2f}x"
            " exact's time"
            + (f" and is no faster on {', '.join(slower)}." if slower else ".")
            + " What it still buys: each random op starts from a freshly seeded state of its own,"
            " so no private generator is placed at an op's position (an mt19937 jump of about"
            " 1-4 ms, or drawing through a short gap) and no op runs for its draws alone; its"
            " values differ from eager's."
        )
    return notes


def plot(figs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = [m for m in figs if MODELS[m].full]
    big = [m for m in figs if not MODELS[m].full]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    systems = [("dormant", "dormant (bit-equal to eager)"), ("dormant-fast", 'dormant rng="fast"'),
               ("meta", "meta + to_empty + init"),
               ("colossalai", "colossalai 0.5.0 (vs its eager)")]  # fmt: skip
    width = 0.2
    for ax, idx, title in ((axes[0], 0, "time, construct + materialize"),
                           (axes[1], 1, "peak resident memory")):  # fmt: skip
        for i, (s, label) in enumerate(systems):
            vals = []
            for m in full:
                base = figs[m]["peer-eager" if s == "colossalai" else "eager"]
                v = figs[m].get(s)
                vals.append(v[idx] / base[idx] if v and v[idx] and base[idx] else 0.0)
            xs = [j + (i - 1.5) * width for j in range(len(full))]
            bars = ax.bar(xs, vals, width, label=label)
            for b, v in zip(bars, vals):
                ax.annotate("fails" if v == 0 else f"{v:.2f}", (b.get_x() + b.get_width() / 2, v),
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(full)), [MODELS[m].short for m in full], fontsize=8)
        ax.set_ylabel("ratio to eager construction (lower is better)")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.3)
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    ax = axes[2]
    for i, (s, label) in enumerate([("dormant", "dormant"), ("meta", "meta device"),
                                     ("accelerate", "accelerate"),
                                     ("colossalai", "colossalai")]):  # fmt: skip
        vals = [figs[m][s][2] if figs[m].get(s) else 0.0 for m in big]
        xs = [j + (i - 1.5) * 0.2 for j in range(len(big))]
        ax.bar(xs, vals, 0.2, label=label)
    ax.set_xticks(range(len(big)), [MODELS[m].short for m in big], fontsize=8)
    ax.set_ylabel("construct time, s (no eager: does not fit in 24 GiB)")
    ax.set_title("construct only (peak: a few MiB for every system)")
    ax.legend(fontsize=8)
    fig.suptitle("dormant vs eager, meta device, accelerate, colossalai (CPU, 2 threads, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out")
    p.add_argument("--docs", default="docs")
    p.add_argument("--elapsed", type=float, default=None, help="wall time of the whole run, s")
    args = p.parse_args()
    out, docs = Path(args.out), Path(args.docs)
    runs, envs = load(out)
    models = [m for m in MODELS if any(k[0] == m for k in runs)]

    header = ["system", "phase", "runs", "time s", "time vs eager", "peak MiB", "peak vs eager",
              "equal to eager", "lazy rate"]  # fmt: skip
    lines: list[str] = []
    figs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for m in models:
        rows, fig = build_rows(out, runs, m)
        figs[m] = fig
        spec = MODELS[m]
        pbytes = next((r["param_bytes"] for rs in (runs.get((m, s, "main"), []) for s in
                       ("dormant", "eager")) for r in rs if "param_bytes" in r), None)  # fmt: skip
        params = next((r["parameters"] for rs in (runs.get((m, s, "main"), []) for s in
                       ("dormant", "eager")) for r in rs if "parameters" in r), None)  # fmt: skip
        size = f"{params / 1e6:,.0f}M parameters, {pbytes / MIB:,.0f} MiB fp32" if params else ""
        lines += ["", f"### {spec.label} ({size})", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        cv = cross_version_equal(out, m)
        if cv and cv[0] != cv[1]:
            notes.append(
                f"- {spec.label}: transformers 4.51 and 5.24 eager builds differ ({cv[0]}/{cv[1]} "
                "tensors equal), so colossalai is compared with its own venv's eager build."
            )
        early = {e for r in runs.get((m, "dormant", "main"), []) for e in r.get("early", [])}
        if early:
            notes.append(f"- {spec.label}: dormant materialized early: {', '.join(sorted(early))}")
        d, e = fig.get("dormant"), fig.get("eager")
        if spec.full and d and e and d[0] and e[0] and d[0] > e[0]:
            notes.append(
                f"- {spec.label}: dormant construct + materialize is {d[0] / e[0]:.2f}x eager "
                "(slower than eager)."
            )

    notes += rng_notes(runs, models)

    docs.mkdir(exist_ok=True)
    plot(figs, docs / "benchmarks.png")
    main_env, peer_env = envs.get("main", {}), envs.get("peer", {})
    start = min((e["start"] for e in envs.values()), default=0)
    date = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    vm = ", ".join(f"{k} {v}" for k, v in main_env.get("versions", {}).items())
    vp = ", ".join(f"{k} {v}" for k, v in peer_env.get("versions", {}).items())
    loads = "; ".join(
        f"{k}: {e['loadavg_start'][0]:.1f} at start, {e['loadavg_end'][0]:.1f} at end"
        for k, e in envs.items()
    )
    elapsed = f"{args.elapsed / 60:.1f} min" if args.elapsed else "not recorded"
    doc = [
        "# Benchmarks",
        "",
        "Construction of models with and without lazy initialization: dormant against eager",
        "construction, PyTorch's meta device, accelerate's `init_empty_weights` and colossalai's",
        "`LazyInitContext`. Written by `benchmarks/report.py`; do not edit by hand.",
        "",
        "![benchmarks](benchmarks.png)",
        "",
        "## How it was measured",
        "",
        f"- Command: `{COMMAND}` (whole run {elapsed}, including the peer venv check).",
        f"- Date: {date}. Machine: {machine()}. Load average (1 min) {loads}: the machine is",
        "  shared, so absolute times move with the load; the ratios are the figures to read.",
        f"- Main venv: {vm}.",
        f"- Peer venv (`benchmarks/setup_peer_venv.sh`): {vp}. colossalai declares torch<=2.5.1",
        "  and is installed with `--no-deps` beside torch 2.13.0, as in `shared/PEERS.md`.",
        "- Every figure is the median over `runs` fresh processes (5 for the models under 400M",
        "  parameters, 3 above), each forked from a template process that has only imported the",
        "  libraries (`--spawn` runs a new interpreter per measurement instead). Systems are",
        "  interleaved run by run. `torch.set_num_threads(2)`; seed 0 before every build.",
        "- Time: wall time of the build (and of materialization or the init pass), imports and",
        "  warm-up excluded. Ratios are to eager construction in the same run; colossalai's to",
        "  eager construction in its own venv (transformers 4.51), shown in its own row.",
        "- Peak: `VmHWM` (peak RSS) of the process minus its RSS just before building, after a",
        "  tiny warm-up build of the same model family by the same system, `gc` and `malloc_trim`.",
        "  For a materialize row: the peak minus RSS after construction.",
        "- Equal to eager: state-dict tensors whose SHA-256 (bytes, dtype, shape) equals the eager",
        "  build's from the same seed, out of all; computed in the first run of each system",
        "  after the figures are taken. *no values*: the system leaves tensors on the meta",
        "  device. Lazy rate: share of parameter and buffer elements still lazy when",
        "  materialization starts (dormant: `materialize(model, report=True).lazy_rate`).",
        "- PyTorch native init pass: transformers `model.init_weights()` (5.x skips it while",
        '  building under `torch.device("meta")`, so this is the one pass, rotary buffers',
        "  included); diffusers: `reset_parameters()` of every module that has one.",
        "- Construct-only models (6.7B and up): eager construction needs more memory than the",
        "  machine has, so their time ratio is to meta-device construction in the same run.",
        "",
        "## Systems",
        "",
        "- **eager**: `Model(config)` on CPU: every tensor allocated and initialized.",
        "- **dormant**: `with dormant.LazyInitContext(): Model(config)`, then",
        "  `dormant.materialize(model)`: values bit-equal to eager. Draws that later code",
        "  overwrites are jumped over (mt19937 jump-ahead), never drawn; the generator is moved",
        "  to where eager construction leaves it at context exit.",
        '- **dormant, `rng="fast"`**: the same with `LazyInitContext(rng="fast")`: each random',
        "  op draws from its own state, derived from the generator's at entry and the op's",
        "  position; no jumps, generators left as at entry; reproducible values, by design not",
        "  eager's.",
        '- **meta + to_empty + init**: PyTorch\'s native recipe, `with torch.device("meta")`,',
        '  `model.to_empty(device="cpu")`, then the model\'s own init pass.',
        "- **accelerate**: `with accelerate.init_empty_weights(): Model(config)`; tensors stay on",
        "  the meta device (values come from a checkpoint), so construct only.",
        "- **colossalai 0.5.0**: `with colossalai.lazy.LazyInitContext(): Model(config)`, then",
        "  `LazyInitContext.materialize(model)`, the API dormant follows; in its own venv.",
        "",
        "## Figures",
    ]
    doc += lines
    doc += ["", "## Notes", ""]
    doc += notes or ["- none"]
    for title, name, command in EXTRA_TABLES:
        doc += ["", f"## {title}", "", f"Command: `{command}`.", ""]
        path = out / name
        doc += [path.read_text().rstrip() if path.exists() else "not measured in this run"]
    doc.append("")
    (docs / "benchmarks.md").write_text("\n".join(doc))
    print(f"wrote {docs / 'benchmarks.md'} and {docs / 'benchmarks.png'}")


if __name__ == "__main__":
    main()

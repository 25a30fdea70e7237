"""Turns the JSON lines of the benchmark suite (launch/bench.sh ->
$BUILD/bench/results.jsonl; protocol in bench/bench_common.h) into the
Markdown report of issue 6, writes it (--out) and prints it.

Tables:
  1. per workload: aesim, each peer (PyTorch as installed, PyTorch tuned to
     its fastest measured setting -- which one is named --, FAISS), the
     ratio aesim / peer, aesim's GFLOP/s and its fraction of the machine's
     limit.  Every number is the median over the timed runs (>= 3), with
     (min-max).  Throughput = items / seconds of each run.
     Interleaved rounds (launch/bench.sh: result lines with "round": k;
     aesim and its headline PyTorch peers taking turns): the lines of one
     (workload, impl, variant) are merged; its figure is the median of the
     per-round medians, with (min-max) over every run, and a ratio of two
     rows timed in the same rounds also gives the min-max of the per-round
     ratios.  Lines without "round" (rows timed once, older results
     files) are one round.  Below the table, the issue-16 target (aesim
     >= 1.3x PyTorch on every training and encoding row, fp32 and bf16)
     restated from those ratios;
     Limit: a roofline with the measured limits (best run of the rounds
     at the start and end of the suite), t_min = max(FLOPs / sgemm
     GFLOP/s, bytes / read GB/s) at the same thread count; the fraction is
     t_min / t_measured, so 100% = running at the machine's limit;
  2. aesim ranks x threads (data-parallel MPI vs OpenMP);
  3. every PyTorch variant timed (setting x malloc environment);
  4. the per-layer profile of aesim's training step (each profiled
     workload), PyTorch's time for the same conv, and per conv layer the
     time of every convolution kernel (generic / avx512 / direct), the
     fastest and AUTO's choice, with a sentence generated from those
     numbers saying which kernel wins for which shapes;
  5. the machine (CPU, cores, OpenBLAS, versions, date, load average).
Does not: measure anything, or judge whether a number is good (the reader
does; the notes only restate what the numbers say, and the issue-16 lines
whether a ratio reaches the issue's 1.3x).
"""
import argparse
import json
import os
import platform
import statistics


def load(path):
    recs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                recs.append(json.loads(line))
    return recs


def rates(r):
    return [r["items"] / s for s in r["seconds"]]


def med(v):
    return statistics.median(v)


def merge_rounds(recs):
    """One result record per (workload, impl, variant): the lines of the
    interleaved rounds ("round": k) merged, "seconds" = every run of every
    round, "round_rates" = {k: median rate of round k}, "interleaved" = the
    lines carried a round.  A line without "round" is round 1."""
    out, by = [], {}
    for r in recs:
        if r["kind"] != "result":
            out.append(r)
            continue
        key = (r["workload"], r["impl"], r["variant"])
        if key not in by:
            by[key] = dict(r, seconds=[], round_rates={}, interleaved="round" in r)
            by[key].pop("round", None)
            out.append(by[key])
        m = by[key]
        m["interleaved"] = m["interleaved"] or "round" in r
        m["seconds"] = m["seconds"] + r["seconds"]
        m["round_rates"].setdefault(r.get("round", 1), []).extend(rates(r))
    for m in by.values():
        m["round_rates"] = {k: med(v) for k, v in sorted(m["round_rates"].items())}
    return out


def center(r):
    """The figure of a result: the median of its per-round medians (one
    round: the median of its runs)."""
    return med(list(r["round_rates"].values())) if r.get("round_rates") else med(rates(r))


def fmt_num(x):
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def opt_num(x):
    return "(not measured)" if x is None else fmt_num(x)


def fmt_rate(r):
    v = rates(r)
    return f"{fmt_num(center(r))} ({fmt_num(min(v))}–{fmt_num(max(v))})"


def ratio_of(a, p):
    """aesim a ÷ peer p: (ratio of the figures, per-round ratios of the rounds
    both were timed in, interleaved; [] unless both were), ratio of the best runs."""
    both = a.get("interleaved") and p.get("interleaved")
    common = [k for k in a["round_rates"] if k in p["round_rates"]] if both else []
    return (center(a) / center(p), [a["round_rates"][k] / p["round_rates"][k] for k in common],
            max(rates(a)) / max(rates(p)))


def fmt_spread(per):
    """The range of per-round ratios ("" for none)."""
    return "" if not per else "1 round" if len(per) == 1 else f"{min(per):.2f}–{max(per):.2f} over {len(per)} rounds"


def fmt_ratio(a, p):
    ratio, per, best = ratio_of(a, p)
    return f"{ratio:.2f}x ({fmt_spread(per) + '; ' if per else ''}best runs {best:.2f}x)"


def unit_of(workload):
    return "queries/s" if workload.startswith("knn") else "images/s"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# SIMD flags of /proc/cpuinfo that decide which kernels run (issue 16: bf16
# needs avx512_bf16; amx_bf16 is listed for the record).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [fl for fl in SIMD_FLAGS if fl in have], [fl for fl in SIMD_FLAGS if fl not in have]
    except OSError:
        pass
    return [], list(SIMD_FLAGS)


def mem_total_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class Limits:
    def __init__(self, recs, threads):
        # Best run over every measurement round: other jobs on the cores can
        # only lower what a run reaches, so the best run is the limit.
        self.by = {}
        for r in recs:
            if r["kind"] == "limit":
                self.by.setdefault((r["name"], r["threads"]), []).extend(r["values"])
        self.threads = threads
        self.peak, self.bw, self.fma = (max(self.by[(n, threads)]) if (n, threads) in self.by else None
                                        for n in ("sgemm", "mem_read", "fma_peak"))

    def fma_fraction(self, r):
        """Fraction of the register-only FMA peak (compute only), or None."""
        if not self.fma or not r["flop_item"]:
            return None
        return gflops(r) / self.fma

    def fraction(self, r):
        """(fraction of the roofline limit, which bound) for result r."""
        t = r["items"] / center(r)
        t_flop = r["items"] * r["flop_item"] / (self.peak * 1e9) if self.peak and r["flop_item"] else 0.0
        t_mem = r["bytes_run"] / (self.bw * 1e9) if self.bw and r["bytes_run"] else 0.0
        if t_flop == 0 and t_mem == 0:
            return None, ""
        return max(t_flop, t_mem) / t, ("sgemm" if t_flop >= t_mem else "mem read")


def gflops(r):
    return center(r) * r["flop_item"] * 1e-9


SETTING_ORDER = ("default", "channels_last", "channels_last-bf16", "no-mkldnn")


def torch_label(r):
    setting = {"default": "NCHW, mkldnn (default)", "channels_last": "channels_last, mkldnn",
               "no-mkldnn": "NCHW, no mkldnn (im2col+BLAS)",
               "channels_last-bf16": "channels_last, mkldnn, autocast bf16"}.get(r.get("setting"), r.get("setting", ""))
    env = r.get("env", "default")
    return setting + ("" if env == "default" else f"; {env}")


# Issue 16: aesim at least this many times PyTorch on every training and
# encoding row (fp32 against PyTorch tuned, bf16 against its bf16 autocast).
ISSUE16_TARGET = 1.3


def bf16_rate_note(recs):
    """Why aesim's bf16 is slow here, from bench_limits's measured VDPBF16PS
    rate (its "info" record), or "" where it pays (or was not measured)."""
    rates = [r["bf16_dot_speedup"] for r in recs if r["kind"] == "info" and "bf16_dot_speedup" in r]
    try:
        rate = float(rates[0])
    except (IndexError, TypeError, ValueError):
        return ""
    if rate <= 0 or rate >= 1.4:
        return ""
    amx = " PyTorch's bf16 runs AMX tiles (amx_bf16), aesim has no AMX kernels yet;" \
        if "amx_bf16" in cpu_flags()[0] else ""
    return (f" (this CPU's VDPBF16PS does {rate:.2f}x the multiply-adds per second of float32 FMAs:{amx} "
            f"--precision auto trains fp32 here)")


def target_lines(hits, recs):
    """The issue-16 target restated from the main table's ratios; hits =
    [(workload, "fp32" | "bf16", aesim row, peer row, faster PyTorch row
    timed once or None); recs: every record (for bf16_rate_note)."""
    out = []
    for which, name in (("fp32", "aesim fp32 ÷ PyTorch tuned fp32"), ("bf16", "aesim bf16 ÷ PyTorch bf16 autocast")):
        rows = [(w, ratio_of(a, p), ratio_of(a, once)[0] if once else None)
                for w, h, a, p, once in hits if h == which and a is not None]
        untimed = [w for w, h, a, p, once in hits if h == which and a is None]
        if untimed and not rows:  # PyTorch bf16 timed, aesim bf16 not (no AVX512_BF16 here)
            out.append(f"- {name}: not timed on this CPU (no AVX512_BF16: aesim's bf16 would run emulated); "
                       f"the target applies to CPUs with AVX512_BF16 ({', '.join(untimed)})")
            continue
        if not rows:
            continue
        # a row counts as met when aesim leads both the peer of the rounds
        # and a faster setting of PyTorch's timed once (if any) by the target
        ok = [min(r[0], o if o is not None else r[0]) >= ISSUE16_TARGET for _, r, o in rows]
        out.append(f"- {name}: {'met' if all(ok) else 'NOT met'} ({sum(ok)} of {len(rows)} rows at "
                   f"{ISSUE16_TARGET}x or more): " + "; ".join(
            f"{w} {ratio:.2f}x" + (f" ({fmt_spread(per)})" if per else "")
            + (f", {o:.2f}x against PyTorch's faster fp32 row timed once" if o is not None else "")
            + ("" if good else " (not met)") for (w, (ratio, per, _), o), good in zip(rows, ok))
            + (bf16_rate_note(recs) if which == "bf16" else ""))
    if out:
        out.insert(0, f"Issue 16 target: aesim at least {ISSUE16_TARGET}x PyTorch on every training and encoding "
                      "row; the ratio of the figures above (per-round range where the peers took turns):")
    return out


def main_table(recs, lim, T):
    """The workload table, then the issue-16 target lines."""
    out, hits = [], []
    order = []
    for r in recs:
        if r["kind"] == "result" and r["workload"] not in order:
            order.append(r["workload"])
    out.append(f"| Workload ({T} threads) | aesim | Peer | Peer result | aesim ÷ peer: figures (per-round "
               f"min–max; best runs) | aesim GFLOP/s | aesim % of limit |")
    out.append("|---|---|---|---|---|---|---|")
    one_rank = f"1 rank x {T} thread" + ("s" if T > 1 else "")
    for w in order:
        rs = [r for r in recs if r["kind"] == "result" and r["workload"] == w]
        aes = [r for r in rs if r["impl"] == "aesim" and (not r.get("ranks") or r["variant"] == one_rank)]
        aes_bf16 = [r for r in rs if r["impl"] == "aesim" and r.get("precision") == "bf16"]
        if not aes:
            continue
        a = aes[0]
        peers = []
        torch = [r for r in rs if r["impl"] == "torch"]
        if torch:
            inst = [r for r in torch if r.get("env") == "default" and r.get("setting") == "default"]
            if inst:
                peers.append(("PyTorch as installed", inst[0]))
            # the tuned peers: the fastest setting timed in the interleaved
            # rounds if any (bench.sh: its fastest), else the fastest timed
            # (fp32 and bf16 each: one may have been timed in rounds only)
            def tuned_of(rows):
                inter = [r for r in rows if r.get("interleaved")]
                return (inter, "timed in turn with aesim") if inter else (rows, "fastest")
            fp32, how = tuned_of([r for r in torch if not r.get("setting", "").endswith("-bf16")])
            if fp32:
                best = max(fp32, key=center)
                peers.append((f"PyTorch tuned ({how}: {torch_label(best)})", best))
                # a setting timed once that outran the peer of the rounds
                once = max((r for r in torch if not r.get("setting", "").endswith("-bf16")), key=center)
                if center(once) > center(best):
                    peers.append((f"PyTorch's fastest fp32 row, timed once ({torch_label(once)})", once))
            bf16, _ = tuned_of([r for r in torch if r.get("setting", "").endswith("-bf16")])
            if bf16:  # issue 16: PyTorch's bf16 mixed precision, a separate peer
                best = max(bf16, key=center)
                peers.append((f"PyTorch bf16 autocast ({torch_label(best)})", best))
        for r in rs:
            if r["impl"] == "faiss":
                extra = f", same ids {100 * r['same_ids']:.0f}%" if "same_ids" in r else ""
                peers.append((f"FAISS IndexFlatL2{extra}", r))
        frac, bound = lim.fraction(a)
        fr = f"{100 * frac:.0f}% ({bound})" if frac is not None else "–"
        ff = lim.fma_fraction(a)
        if ff is not None and bound == "sgemm":
            fr += f"; {100 * ff:.0f}% of FMA peak"
        label = f"{w} [{unit_of(w)}]" + (f", {a['variant']}" if "calls" in a["variant"] else "")
        if not peers:
            out.append(f"| {label} | {fmt_rate(a)} | – | – | – | {gflops(a):.1f} | {fr} |")
        for i, (name, p) in enumerate(peers):
            first = i == 0
            out.append(f"| {label if first else ''} | {fmt_rate(a) if first else ''} | {name} | {fmt_rate(p)} | "
                       f"{fmt_ratio(a, p)} | {f'{gflops(a):.1f}' if first else ''} | {fr if first else ''} |")
        # issue 16: aesim --precision bf16 against PyTorch's bf16 autocast
        tb = [p for name, p in peers if name.startswith("PyTorch bf16")]
        tuned = [p for name, p in peers if name.startswith("PyTorch tuned")]
        faster_once = [p for name, p in peers if name.startswith("PyTorch's fastest fp32 row")]
        if w.startswith(("train ", "encode ")):
            hits += [(w, "fp32", a, p, (faster_once or [None])[0]) for p in tuned[:1]]
            hits += [(w, "bf16", b, p, None) for b in (aes_bf16[:1] or [None]) for p in tb[:1]]
        if tb and not aes_bf16 and "avx512_bf16" not in cpu_flags()[0]:
            out.append("| aesim --precision bf16 | not timed: this CPU has no AVX512_BF16 (it would run emulated) "
                       f"| PyTorch bf16 autocast | {fmt_rate(tb[0])} | – | | |")
        for b in aes_bf16:
            # model_precision_describe: "bf16 (VDPBF16PS kernels)" or an emulation
            how = b.get("arithmetic", "bf16 (emulated: float32 kernels on rounded operands)")
            how = how[how.find("(") + 1:how.rfind(")")] if "(" in how else how
            if tb:
                out.append(f"| aesim --precision bf16 ({how}) | {fmt_rate(b)} | PyTorch bf16 autocast | "
                           f"{fmt_rate(tb[0])} | {fmt_ratio(b, tb[0])} | {gflops(b):.1f} | |")
            else:
                out.append(f"| aesim --precision bf16 ({how}) | {fmt_rate(b)} | – | – | – | {gflops(b):.1f} | |")
    tl = target_lines(hits, recs)
    return out + ([""] + tl if tl else [])


def ranks_table(recs, T):
    out = ["| Workload | 1 rank x %d threads | %d ranks x 1 thread | ranks ÷ threads |" % (T, T), "|---|---|---|---|"]
    rows = 0
    for w in dict.fromkeys(r["workload"] for r in recs if r["kind"] == "result"):
        a = [r for r in recs if r["kind"] == "result" and r["workload"] == w and r["impl"] == "aesim"
             and r.get("ranks") and r.get("precision", "fp32") != "bf16"]
        one = [r for r in a if r["ranks"] == 1]
        many = [r for r in a if r["ranks"] > 1]
        if one and many:
            rows += 1
            out.append(f"| {w} | {fmt_rate(one[0])} | {fmt_rate(many[0])} | "
                       f"{center(many[0]) / center(one[0]):.2f} |")
    return out if rows else []


def torch_table(recs, lim):
    out = ["| Workload | PyTorch setting; malloc environment | images/s median (min–max) | GFLOP/s | "
           "% of sgemm | % of FMA peak | page faults / step |", "|---|---|---|---|---|---|---|"]
    order = list(dict.fromkeys(r["workload"] for r in recs if r["kind"] == "result"))
    envs = ("default", "malloc keep", "malloc keep+THP")

    def place(r):  # as timed before the rounds: environment by environment, no-mkldnn last
        s, e = r.get("setting"), r.get("env")
        return (order.index(r["workload"]), s == "no-mkldnn", envs.index(e) if e in envs else len(envs),
                SETTING_ORDER.index(s) if s in SETTING_ORDER else len(SETTING_ORDER))
    torch = sorted((r for r in recs if r["kind"] == "result" and r["impl"] == "torch"), key=place)
    for r in torch:
        frac, _ = lim.fraction(r)
        ff = lim.fma_fraction(r)
        turns = f" ({len(r['round_rates'])} interleaved rounds)" if r.get("interleaved") else ""
        out.append(f"| {r['workload']} | {torch_label(r)}{turns} | {fmt_rate(r)} | {gflops(r):.1f} | "
                   f"{100 * frac:.0f}% | {'–' if ff is None else f'{100 * ff:.0f}%'} | "
                   f"{r.get('minflt_per_step', float('nan')):,.0f} |")
    return out


# Convolution kernels of conv2d.h, in the order of the kernel table.
KERNEL_ORDER = ("generic", "avx512", "direct")
KERNEL_DESC = {"generic": "im2col + OpenBLAS sgemm", "avx512": "im2col + aesim's AVX-512 GEMMs",
               "direct": "direct KxK AVX-512, no im2col"}


def kernel_totals(r):
    """{kernel: fwd + bwd seconds} of a conv row's per-kernel times."""
    return {k: v[0] + v[1] for k, v in r.get("kernels", {}).items()}


def kernel_table(convs):
    """Per conv layer: fwd+bwd ms under each kernel, the fastest, its GFLOP/s,
    what AUTO runs and AUTO's time over the fastest."""
    names = [k for k in KERNEL_ORDER if any(k in r["kernels"] for r in convs)]
    names += sorted({k for r in convs for k in r["kernels"]} - set(names))
    out = ["| # | Layer | " + " | ".join(f"{k} ms: fwd+bwd (fwd / bwd)" for k in names)
           + " | fastest | its GFLOP/s | AUTO runs | AUTO ÷ fastest |",
           "|---|---|" + "---|" * (len(names) + 4)]
    for r in convs:
        tot = kernel_totals(r)
        best = min(tot, key=tot.get)
        cells = []
        for k in names:
            if k not in r["kernels"]:
                cells.append("– (not run on this CPU)")
                continue
            f, b = r["kernels"][k]
            c = f"{1e3 * (f + b):.2f} ({1e3 * f:.2f} / {1e3 * b:.2f})"
            cells.append(f"**{c}**" if k == best else c)
        auto = r.get("auto", "?")
        ratio = f"{tot[auto] / tot[best]:.2f}" if auto in tot else "–"
        out.append(f"| {r['index']} | {r['desc']} | " + " | ".join(cells) + f" | {best} | "
                   f"{(r['fwd_flop'] + r['bwd_flop']) / tot[best] * 1e-9:.1f} | {auto} | {ratio} |")
    return out


def kernel_bullet(convs):
    """One sentence, from the numbers: which kernel is fastest (fwd+bwd) for
    which layer shapes, by how much, and what AUTO's choice costs."""
    shapes = {}  # desc -> rows with that shape (same desc = same C, OC, H, W, K, activation)
    for r in convs:
        shapes.setdefault(r["desc"], []).append(r)
    wins = {}
    for desc, rows in shapes.items():
        tot = {}
        for r in rows:
            for k, v in kernel_totals(r).items():
                tot[k] = tot.get(k, 0.0) + v
        ranked = sorted(tot, key=tot.get)
        idx = ", ".join(f"#{r['index']}" for r in rows)
        if len(ranked) > 1:
            gain = f"{tot[ranked[1]] / tot[ranked[0]]:.2f}x faster than {ranked[1]}"
        else:
            gain = "the only kernel run"
        wins.setdefault(ranked[0], []).append(f"{desc} ({idx}; {gain})")
    order = sorted(wins, key=lambda k: -len(wins[k]))
    parts = [f"{k} on {len(wins[k])} of {len(shapes)} shapes: " + ", ".join(wins[k]) for k in order]
    split = []
    for r in convs:
        ks = r["kernels"]
        if len(ks) > 1:
            bf, bb = min(ks, key=lambda k: ks[k][0]), min(ks, key=lambda k: ks[k][1])
            if bf != bb:
                split.append(f"#{r['index']} (forward: {bf}, backward: {bb})")
    auto_t = sum(kernel_totals(r).get(r.get("auto"), float("nan")) for r in convs)
    best_t = sum(min(kernel_totals(r).values()) for r in convs)
    autos = sorted({r.get("auto", "?") for r in convs})
    lost = [r for r in convs if r.get("auto") in r["kernels"]
            and kernel_totals(r)[r["auto"]] > min(kernel_totals(r).values())]
    text = ("- fastest convolution kernel per layer shape (conv2d_forward + conv2d_backward alone, medians): "
            + "; ".join(parts) + ". ")
    if split:
        text += "The forward and backward winners differ on " + ", ".join(split) + ". "
    text += (f"AUTO ({'/'.join(autos)} on this CPU) is the fastest on {len(convs) - len(lost)} of {len(convs)} "
             f"conv layers; all convs take {1e3 * auto_t:.1f} ms with AUTO's choice against "
             f"{1e3 * best_t:.1f} ms with the fastest kernel per layer"
             + (f" ({100 * (auto_t / best_t - 1):.0f}% more)" if auto_t > best_t else ""))
    return text


def profile_workload(recs, w, threads, heading):
    layers = [r for r in recs if r["kind"] == "layer" and r["workload"] == w and r.get("threads") == threads]
    tl = [r for r in recs if r["kind"] == "torch_layer" and r["workload"] == w]
    tsetting = f"{tl[0]['setting']}, {tl[0]['env']}" if tl else ""

    def torch_time(L, op):
        for t in tl:
            if (t["op"], t["C"], t["OC"], t["H"], t["W"], t["K"]) == (op, L["C"], L["OC"], L["H"], L["W"], L["K"]):
                return t["seconds_per_call"]
        return None

    convs = [r for r in layers if r.get("type") == "conv"]
    timed = [r for r in convs if r.get("kernels")]
    ran = sorted({r["kernel"] for r in convs if "kernel" in r})
    total = sum(r["fwd_s"] + r["bwd_s"] for r in layers)
    nthr = "" if threads is None else f" x {threads} thread{'s' if threads > 1 else ''}"
    out = ([f"### {w}, 1 rank{nthr}", ""] if heading else []) + [
           f"Workload: {w}, one rank{nthr}; medians over {layers[0]['steps']} profiled steps"
           + (f"; the convolutions ran the {'/'.join(ran)} kernel" if ran else "") + ". "
           "GFLOP/s = 2 x MACs / time (backward = weight grad + input grad, no input grad for layer 0). "
           + (f"PyTorch = torch.profiler time per call of aten::convolution / aten::convolution_backward for "
              f"the same shape ({tsetting}; two layers with one shape share the average)." if tl else ""),
           "",
           "| # | Layer | fwd ms | fwd GFLOP/s | bwd ms | bwd GFLOP/s | PyTorch fwd / bwd ms | share of step |",
           "|---|---|---|---|---|---|---|---|"]
    conv_t = 0.0
    for r in layers:
        f_ms, b_ms = 1e3 * r["fwd_s"], 1e3 * r["bwd_s"]
        conv = r.get("type") == "conv"
        gf = f"{r['fwd_flop'] / r['fwd_s'] * 1e-9:.1f}" if conv else ""
        gb = f"{r['bwd_flop'] / r['bwd_s'] * 1e-9:.1f}" if conv else ""
        tt = ""
        if conv and tl:
            tf, tb = torch_time(r, "fwd"), torch_time(r, "bwd")
            tt = f"{1e3 * tf:.1f} / {1e3 * tb:.1f}" if tf is not None and tb is not None else "?"
        if conv:
            conv_t += r["fwd_s"] + r["bwd_s"]
        bwd = f"{b_ms:.2f}" if r.get("type") != "other" else ""
        out.append(f"| {r['index']} | {r['desc']} | {f_ms:.2f} | {gf} | {bwd} | {gb} | {tt} | "
                   f"{100 * (r['fwd_s'] + r['bwd_s']) / total:.1f}% |")
    out.append(f"| | total | | | | | | {1e3 * total:.0f} ms |")
    if timed:
        names = sorted({k for r in timed for k in r["kernels"]},
                       key=lambda k: KERNEL_ORDER.index(k) if k in KERNEL_ORDER else len(KERNEL_ORDER))
        reps = timed[0].get("kernel_reps", layers[0]["steps"])
        out += ["", "Convolution kernels per layer shape (issue 6: the algorithm per shape, by measurement): "
                "each conv's conv2d_forward and conv2d_backward timed alone under every kernel this CPU runs ("
                + "; ".join(f"{k} = {KERNEL_DESC.get(k, k)}" for k in names) + "), "
                f"same N, threads, fused ReLU and scratch as in the step, on the step's own activations and a "
                f"gradient buffer; median of {reps} calls after one warm-up, kernels taking turns. "
                "These times exclude the output layer's sigmoid, whose forward the layer rows above include (its backward is in the loss row). "
                "Fastest in bold; AUTO = the kernel conv2d runs when none is forced (CONV_KERNEL_AUTO).", ""]
        out += kernel_table(timed)
    elif convs:
        out += ["", "(No per-kernel times in these results: written by a bench_train that did not time each "
                "convolution kernel.)"]
    top = sorted(layers, key=lambda r: -(r["fwd_s"] + r["bwd_s"]))[:3]
    pool_t = sum(r["fwd_s"] + r["bwd_s"] for r in layers if r.get("type") in ("maxpool", "upsample"))
    bullets = [f"- convolutions take {100 * conv_t / total:.0f}% of the step",
               "- the three most expensive layers: " + "; ".join(
                   f"#{r['index']} {r['desc']} {1e3 * (r['fwd_s'] + r['bwd_s']):.0f} ms" for r in top),
               f"- pooling and upsampling: {100 * pool_t / total:.1f}% of the step"
               + (" outside the conv rows (a max-pool or upsample marked \"in #i\" runs inside conv #i, fused, "
                  "and its time is in that row)"
                  if any("(in #" in r["desc"] for r in layers) else "")]
    if timed:
        bullets.append(kernel_bullet(timed))
    if tl:
        slow = []
        for r in convs:
            tf, tb = torch_time(r, "fwd"), torch_time(r, "bwd")
            if tf and tb:
                slow.append(((r["fwd_s"] + r["bwd_s"]) / (tf + tb), r))
        slow.sort(key=lambda x: -x[0])
        bullets.append("- aesim ÷ PyTorch time per conv (fwd+bwd; a row marked +maxpool or upsample+ includes "
                       "that layer, PyTorch's conv time does not), worst first: " + "; ".join(
            f"#{r['index']} {r['desc']} {x:.1f}x" for x, r in slow[:5]))
    out += ["", "Read from the profile:"] + [b + (";" if i + 1 < len(bullets) else ".") for i, b in enumerate(bullets)]
    return out


def profile_section(recs):
    """One profile per workload and thread count with layer rows (bench_train
    --profile; rows without "threads" come from older runs)."""
    runs = list(dict.fromkeys((r["workload"], r.get("threads")) for r in recs if r["kind"] == "layer"))
    out = []
    for w, t in runs:
        out += ([""] if out else []) + profile_workload(recs, w, t, len(runs) > 1)
    return out


def machine_section(recs, info):
    lim_lines, seen = [], {}
    for r in recs:
        if r["kind"] == "limit":
            v = r["values"]
            size = f"n={r['n']}" if "n" in r else r["isa"] if "isa" in r else f"{r.get('mib')} MiB"
            key = (r["name"], r["threads"])
            seen[key] = seen.get(key, 0) + 1
            lim_lines.append(f"| {r['name']} ({size}) | {r['threads']} | {seen[key]} | {fmt_num(med(v))} "
                             f"({fmt_num(min(v))}–{fmt_num(max(v))}) {r['unit']} |")
    notes = [f"- note: {r['note']}" for r in recs if r["kind"] == "info" and "note" in r]
    out = notes + [f"- CPU: {cpu_model()}; {os.cpu_count()} cores online, {len(os.sched_getaffinity(0))} usable; "
           f"{mem_total_gib():.0f} GiB RAM",
           f"- CPU SIMD flags: has {' '.join(cpu_flags()[0]) or 'none of them'}; lacks "
           f"{' '.join(cpu_flags()[1]) or 'none'}"
           + ("" if "avx512_bf16" in cpu_flags()[0] else " (no AVX512_BF16: aesim bf16 is not timed, it would run "
                                                          "emulated)"),
           *([f"- VDPBF16PS: {float(info['bf16_dot_speedup']):.2f}x the multiply-adds per second of float32 FMAs "
              f"(bench_limits, conv_bf16_dot_speedup; --precision auto runs bf16 from 1.4x)"]
             if float(info.get("bf16_dot_speedup", 0) or 0) > 0 else []),
           f"- OpenBLAS: {info.get('openblas_config', '?')} (OPENBLAS_CORETYPE: {info.get('openblas_coretype', '?')})",
           f"- PyTorch {info.get('torch_version', '?')}, FAISS {info.get('faiss_version', '?')}, "
           f"Python {platform.python_version()}",
           f"- date: {info.get('date', '?')}; aesim git {info.get('git', '?')}; suite took "
           f"{info.get('suite_seconds', '?')} s{' (BENCH_QUICK=1: reduced sizes)' if info.get('quick') == '1' else ''}",
           f"- load average (1/5/15 min) before: {info.get('loadavg_start', '?')}, after: "
           f"{info.get('loadavg_end', '?')} (above 0 means other jobs shared the cores: numbers are noisy)"
           + "".join(f"{'; at the start of each section (1 min): ' if i == 0 else ', '}{r['section']} "
                     f"{r['loadavg'].split()[0]}" for i, r in enumerate(x for x in recs if x["kind"] == "load")),
           "", "| Limit | threads | round (1 = start, 2 = end) | median (min–max) |", "|---|---|---|---|"]
    out += lim_lines
    return out


def ivf_section(recs, info):
    """IVF index (issue 15): aesim beside FAISS IndexIVFFlat, per nprobe."""
    iv = [r for r in recs if r["kind"] == "ivf"]
    if not iv:
        return []

    def one(impl, what, nprobe=0, nq=0):
        m = [r for r in iv if r["impl"] == impl and r["what"] == what and r["nprobe"] == nprobe and r["nq"] == nq]
        return m[0] if m else None

    def qps(r):
        return r["items"] / r["seconds"] if r and r["seconds"] > 0 else None

    def f(v, nd=1):
        return "–" if v is None else f"{v:,.{nd}f}"

    def ratio(a, b):
        return "–" if a is None or b is None else f"{a / b:.2f}"

    ta, tf, tfa = one("aesim", "train"), one("faiss", "train"), one("faiss", "train+add")
    first = ta or tf
    nq_many = max(r["nq"] for r in iv)
    out = [f"N = {first['N']:,}, d = {first['d']}, nlist = {first['nlist']}, {first['threads']} threads, clustered "
           "synthetic vectors (bench/bench_ivf.c); recall@10 against the exact ids. Training (k-means, then every "
           f"vector to its list): aesim train-ivf {f(ta and ta['seconds'], 2)} s, FAISS train() + add() "
           f"{f(tfa and tfa['seconds'], 2)} s (train() alone {f(tf and tf['seconds'], 2)} s); FAISS ÷ aesim "
           f"{ratio(tfa and tfa['seconds'], ta and ta['seconds'])}."]
    if "ivf_index_bytes" in info:
        ib, vb = float(info["ivf_index_bytes"]), float(info["ivf_vector_bytes"])
        out[0] += f" Index memory beside the vectors: {ib / 2**20:,.1f} MiB = {100 * ib / vb:.2f}% of the vectors."
    e1, em = qps(one("aesim", "exact", 0, 1)), qps(one("aesim", "exact", 0, nq_many))
    out += ["", f"aesim exact search: {f(e1)} queries/s at nq = 1, {f(em)} at nq = {nq_many:,}.", "",
            f"| nprobe | recall aesim | recall FAISS | nq=1 aesim q/s | FAISS | aesim ÷ FAISS | aesim ÷ exact | "
            f"nq={nq_many:,} aesim q/s | FAISS | aesim ÷ FAISS | aesim ÷ exact |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted({r["nprobe"] for r in iv if r["what"] == "search"}):
        a1, f1 = one("aesim", "search", p, 1), one("faiss", "search", p, 1)
        am, fm = one("aesim", "search", p, nq_many), one("faiss", "search", p, nq_many)
        out.append(f"| {p} | {f(am and am['recall'], 4)} | {f(fm and fm['recall'], 4)} | {f(qps(a1))} | "
                   f"{f(qps(f1))} | {ratio(qps(a1), qps(f1))} | {ratio(qps(a1), e1)} | {f(qps(am))} | {f(qps(fm))} | "
                   f"{ratio(qps(am), qps(fm))} | {ratio(qps(am), em)} |")
    return out


def rounds_text(recs):
    """The sentence saying which rows were timed in interleaved rounds ("" if none)."""
    inter = [r for r in recs if r["kind"] == "result" and r.get("interleaved")]
    if not inter:
        return ""
    names = dict.fromkeys(f"aesim {r['variant']}" if r["impl"] == "aesim" else f"PyTorch {torch_label(r)}"
                          for r in inter)
    n = max(len(r["round_rates"]) for r in inter)
    runs = sorted({len(r["seconds"]) // len(r["round_rates"]) for r in inter})
    return (f" Training and encoding: the peers were timed in {n} interleaved round{'s' if n > 1 else ''}, "
            f"taking turns ({'; '.join(names)}; {'/'.join(map(str, runs))} timed runs each per round, one after "
            "the other in each round), so that the host's noise, which comes in bursts of tens of seconds, falls on "
            "both sides of a ratio: their figures are the median of the per-round medians with (min–max) over "
            "every run, and their ratios give the min–max of the per-round ratios. The other rows (aesim on "
            "several ranks, PyTorch's other settings, no mkldnn) were timed once, after the rounds.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    recs = merge_rounds(load(args.results))
    info = {}
    for r in recs:
        if r["kind"] == "info":
            info.update({k: v for k, v in r.items() if k not in ("kind", "note")})
    T = int(info.get("threads", 1))
    lim = Limits(recs, T)
    lines = ["# aesim benchmarks (issue 6)", "",
             "Generated by `make bench` (launch/bench.sh, bench/report.py). Medians over the timed runs "
             "(at least 3) with (min–max); warm-up excluded; same batch / vectors and thread count for aesim "
             "and its peers. FLOPs = 2 x multiply-adds of the convolutions (training = 3 x forward) or of the "
             f"distance GEMM (kNN: 2 N d per query). Limit = roofline of the measured sgemm (best run) "
             f"{opt_num(lim.peak)} GFLOP/s and read bandwidth {opt_num(lim.bw)} GB/s "
             f"at {T} threads; compute-bound rows also give the fraction of the cores' register-only FMA peak "
             f"({opt_num(lim.fma)} GFLOP/s), which is higher than sgemm when OpenBLAS's run-time "
             "kernel choice uses a narrower vector ISA than the CPU has (see Machine)."
             + rounds_text(recs), "", "## Workloads", ""]
    lines += main_table(recs, lim, T)
    lines += ["", "FAISS \"same ids\" = share of queries whose k ids equal aesim's, in order; aesim re-scores its "
              "candidates exactly (include/search/knn.h), FAISS reports float GEMM distances, so near-ties may come out "
              "in another order."]
    rt = ranks_table(recs, T)
    if rt:
        lines += ["", "## aesim: MPI ranks vs OpenMP threads (same global batch)", ""] + rt
    lines += ["", "## Every PyTorch variant timed", "",
              "malloc keep = GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=16GiB (freed "
              "memory stays in the process); +THP adds glibc.malloc.hugetlb=1 (transparent huge pages).", ""]
    lines += torch_table(recs, lim)
    ivf = ivf_section(recs, info)
    if ivf:
        lines += ["", "## IVF index (issue 15): aesim vs FAISS IndexIVFFlat", ""] + ivf
    prof = profile_section(recs)
    if prof:
        lines += ["", "## Profile: aesim training step, per layer", ""] + prof
    lines += ["", "## Machine", ""] + machine_section(recs, info)
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    print(f"(written to {args.out})")


if __name__ == "__main__":
    main()

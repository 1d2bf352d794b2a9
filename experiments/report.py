#!/usr/bin/env python3
# Plots of training runs (their metrics.jsonl, docs/metrics.md), of a study's summary table
# (experiments/run_study.sh) and of `moe scaling isoflop` fits, as PNG files (matplotlib).
"""Usage:
  report.py RUN_DIR... --out DIR [--summary SUMMARY_CSV [--exclude VARIANTS]] [--results RESULTS_CSV]
            [--scaling ISOFLOP_JSON]
Writes into DIR: loss.png (training loss against tokens), val_loss.png, lr.png, tokens_per_s.png,
dropped_fraction.png and balance.png (MoE runs: per layer), expert_load_<run>.png (per run with
MoE layers: each layer's share of tokens per expert over the logged steps, a heatmap);
with --summary: study.png (each variant's mean validation loss with its standard deviation over
seeds, beside the paper's numbers; --exclude A,B leaves variants out of it); with --results (a study's results.csv): val_loss_flops.png, each
run's validation loss against its training compute 6 x active parameters x tokens (runs of unequal
active size compared at equal compute, as in the upcycling study); with --scaling: isoflop.png,
optimal_params.png, loss_fit.png.
"""
import argparse
import csv
import json
import math
import re
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fail(message):
    print(f"report: {message}", file=sys.stderr)
    sys.exit(2)


def run_label(path):
    """hash/seed_1 -> hash_seed_1; other run directories by their own name."""
    path = os.path.normpath(path)
    name = os.path.basename(path)
    if name.startswith("seed_"):
        name = os.path.basename(os.path.dirname(path)) + "_" + name
    return name


def read_run(path):
    metrics = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(metrics):
        fail(f"{path} has no metrics.jsonl")
    steps, evals = [], []
    with open(metrics) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{metrics}:{number}: not JSON ({e.msg})")
            (evals if "val_loss" in record else steps).append(record)
    if not steps and not evals:
        fail(f"{metrics} holds no records")
    # Validation records carry no token count: the step records' tokens per step gives it.
    per_step = next((r["tokens_seen"] / r["step"] for r in steps if r.get("step") and "tokens_seen" in r), None)
    for r in evals:
        r["tokens_seen"] = r["step"] * per_step if per_step else r["step"]
    return {"label": run_label(path), "steps": steps, "evals": evals, "x_is_tokens": per_step is not None}


def line_plot(runs, out, name, ylabel, series, log_y=False):
    """One line per run (and per extra key series returns); skipped when no run has the field."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for run in runs:
        for label, xs, ys in series(run):
            if xs:
                ax.plot(xs, ys, label=label, marker="." if len(xs) < 20 else None)
                drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    xlabel = "tokens" if all(r["x_is_tokens"] for r in runs) else "step"
    return finish(fig, ax, out, name, xlabel, ylabel, log_y=log_y, legend=drawn <= 16)


def field(records, key):
    rows = [r for r in records if key in r]
    return [r["tokens_seen"] for r in rows], [r[key] for r in rows]


def moe_series(run, key):
    """(label, xs, ys) per MoE layer of one run for a per-layer field of the moe entries."""
    layers = {}
    for r in run["steps"]:
        for entry in r.get("moe", []):
            if key in entry:
                xs, ys = layers.setdefault(entry["layer"], ([], []))
                xs.append(r["tokens_seen"])
                ys.append(entry[key])
    return [(f"{run['label']} layer {layer}", xs, ys) for layer, (xs, ys) in sorted(layers.items())]


def balance_series(run):
    """aux_loss of the step and every balancing term of every layer."""
    out = [(f"{run['label']} aux_loss", *field(run["steps"], "aux_loss"))]
    terms = {}
    for r in run["steps"]:
        for entry in r.get("moe", []):
            for term, value in (entry.get("balance") or {}).items():
                xs, ys = terms.setdefault((entry["layer"], term), ([], []))
                xs.append(r["tokens_seen"])
                ys.append(value)
    out += [(f"{run['label']} layer {layer} {term}", xs, ys) for (layer, term), (xs, ys) in sorted(terms.items())]
    return out


def expert_load(run, out):
    """Heatmap per MoE layer: experts x logged steps, each cell the expert's share of the tokens."""
    layers = {}
    for r in run["steps"]:
        for entry in r.get("moe", []):
            counts = entry.get("tokens_per_expert")
            if counts:
                total = sum(counts) or 1
                layers.setdefault(entry["layer"], ([], []))
                layers[entry["layer"]][0].append(r["tokens_seen"])
                layers[entry["layer"]][1].append([c / total for c in counts])
    if not layers:
        return None
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.6 * len(layers)), squeeze=False)
    for ax, (layer, (xs, shares)) in zip(axes[:, 0], sorted(layers.items())):
        grid = list(map(list, zip(*shares)))  # experts x steps
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                          extent=(0, len(xs), -0.5, len(grid) - 0.5))
        ticks = sorted(set([0, len(xs) // 2, len(xs) - 1]))
        ax.set_xticks([t + 0.5 for t in ticks], [f"{xs[t]:.3g}" for t in ticks])
        ax.set_ylabel(f"layer {layer}\nexpert")
        fig.colorbar(image, ax=ax, label="share of tokens")
    axes[-1, 0].set_xlabel("tokens")
    fig.suptitle(f"{run['label']}: expert load")
    fig.tight_layout()
    path = os.path.join(out, f"expert_load_{run['label']}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_plot(summary, out, exclude=()):
    """Bars of each variant's mean validation loss with its std over seeds; the paper's numbers beside.
    Variants in `exclude` are left out (one far from the rest, as an oracle, flattens the others)."""
    if not os.path.isfile(summary):
        fail(f"no summary table {summary}")
    rows = list(csv.DictReader(open(summary)))
    if not rows or "val_loss_mean" not in rows[0]:
        fail(f"{summary} is not a run_study.sh summary.csv (no val_loss_mean column)")
    unknown = [v for v in exclude if v not in {r["variant"] for r in rows}]
    if unknown:
        fail(f"--exclude: {summary} has no variant {unknown[0]}")
    rows = [r for r in rows if r["variant"] not in exclude]
    names = [r["variant"] for r in rows]
    means = [float(r["val_loss_mean"]) for r in rows]
    stds = [float(r["val_loss_std"]) if r["val_loss_std"] else 0.0 for r in rows]
    papers = [float(r["paper"]) if r.get("paper") else math.nan for r in rows]
    has_paper = any(not math.isnan(p) for p in papers)
    fig, axes = plt.subplots(1, 2 if has_paper else 1, figsize=(11 if has_paper else 7, 0.45 * len(rows) + 2),
                             squeeze=False)
    ys = list(range(len(rows)))
    ax = axes[0, 0]
    ax.barh(ys, means, xerr=stds, capsize=3, color="tab:blue")
    ax.set_yticks(ys, [f"{n} (n={r['num_seeds']})" for n, r in zip(names, rows)])
    ax.invert_yaxis()
    low = min(m - s for m, s in zip(means, stds))
    high = max(m + s for m, s in zip(means, stds))
    ax.set_xlim(low - 0.1 * (high - low + 1e-3), high + 0.1 * (high - low + 1e-3))
    ax.set_xlabel("validation loss (mean ± std over seeds)")
    ax.set_title("this run")
    if has_paper:
        ax2 = axes[0, 1]
        ax2.barh(ys, [0 if math.isnan(p) else p for p in papers], color="tab:gray")
        ax2.set_yticks(ys, names)
        ax2.invert_yaxis()
        finite = [p for p in papers if not math.isnan(p)]
        span = max(max(finite) - min(finite), 0.05 * max(abs(p) for p in finite), 1e-3)
        ax2.set_xlim(min(finite) - 0.2 * span, max(finite) + 0.2 * span)
        ax2.ticklabel_format(axis="x", useOffset=False)
        ax2.set_xlabel("the paper's number (its own metric: loss or perplexity)")
        ax2.set_title("paper")
    fig.tight_layout()
    path = os.path.join(out, "study.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def flops_plot(runs, results, out):
    """Validation loss against training FLOPs, 6 x active parameters (results.csv) x tokens, per run."""
    if not os.path.isfile(results):
        fail(f"no results table {results}")
    active = {}
    for row in csv.DictReader(open(results)):
        if "name" not in row or "active_params" not in row:
            fail(f"{results} is not a run_study.sh results.csv (no name or active_params column)")
        seed = row.get("seed") or ""
        active[row["name"] + (f"_seed_{seed}" if seed else "")] = float(row["active_params"])
    missing = [r["label"] for r in runs if r["label"] not in active]
    if missing:
        fail(f"{results} has no row for run {missing[0]}")
    # One line per variant: the seeds' mean at each evaluation (a run's label less its _seed_N).
    variants = {}
    for run in runs:
        name = re.sub(r"_seed_\d+$", "", run["label"])
        for x, y in zip(*field(run["evals"], "val_loss")):
            variants.setdefault(name, {}).setdefault(6 * active[run["label"]] * x, []).append(y)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in variants.items():
        xs = sorted(points)
        seeds = max(len(points[x]) for x in xs)
        ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker=".",
                label=name + (f" (mean of {seeds} seeds)" if seeds > 1 else ""))
    return finish(fig, ax, out, "val_loss_flops", "training compute (FLOPs: 6 x active parameters x tokens)",
                  "validation loss", legend=len(variants) <= 16)


def finish(fig, ax, out, name, xlabel, ylabel, log_x=False, log_y=False, title=None, legend=True):
    """Labels, scales, grid and legend of one axis, then the figure saved as OUT/NAME.png."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, name + ".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def isoflop_plot(fit, out):
    """Each budget's runs (loss against N), its parabola in ln N and its minimum."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for budget in fit["budgets"]:
        ns = [r["params"] for r in budget["runs"]]
        line = ax.plot(ns, [r["loss"] for r in budget["runs"]], "o", label=f"C = {budget['flops']:.3g}")[0]
        if budget.get("parabola"):
            a, b, c = budget["parabola"]
            lo, hi = math.log(min(ns)), math.log(max(ns))
            grid = [lo + (hi - lo) * i / 50 for i in range(51)]
            ax.plot([math.exp(x) for x in grid], [a * x * x + b * x + c for x in grid], color=line.get_color())
            ax.plot([budget["params_opt"]], [budget["loss_opt"]], "*", ms=12, color=line.get_color())
    return finish(fig, ax, out, "isoflop", "parameters N", "loss", log_x=True, title="IsoFLOP profiles (approach 2)")


def optimal_params_plot(fit, out):
    """N_opt against C: approach 2's minima and approach 1's envelope, each with its power law."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, marker, label in (("approach2", "*", "IsoFLOP minima"), ("approach1", "o", "envelope")):
        law = fit.get(key)
        if not law:
            continue
        cs = [p["flops"] for p in law["points"]]
        line = ax.plot(cs, [p["params"] for p in law["points"]], marker,
                       label=f"{label}: N_opt ∝ C^{law['exponent']:.3f}")[0]
        grid = [min(cs) * (max(cs) / min(cs)) ** (i / 20) for i in range(21)]
        ax.plot(grid, [law["coefficient"] * c ** law["exponent"] for c in grid], color=line.get_color())
    return finish(fig, ax, out, "optimal_params", "compute C (FLOPs)", "compute-optimal parameters N_opt",
                  log_x=True, log_y=True)


def loss_fit_plot(fit, out):
    """Approach 3: the Huber fit's L(N, D) against every run's observed loss."""
    law = fit.get("approach3")
    if not law:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    runs = [r for b in fit["budgets"] for r in b["runs"]]
    observed = [r["loss"] for r in runs]
    predicted = [law["e"] + law["a"] / r["params"] ** law["alpha"] + law["b"] / r["tokens"] ** law["beta"] for r in runs]
    ax.plot(observed, predicted, "o")
    lo, hi = min(observed + predicted), max(observed + predicted)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    return finish(fig, ax, out, "loss_fit", "observed loss", "L(N, D) of the Huber fit", legend=False,
                  title=f"approach 3: α = {law['alpha']:.3f}, β = {law['beta']:.3f}, E = {law['e']:.3f}")


def scaling_plots(path, out):
    """The three fits of `moe scaling isoflop --json`."""
    if not os.path.isfile(path):
        fail(f"no scaling fit {path}")
    fit = json.load(open(path))
    return [isoflop_plot(fit, out), optimal_params_plot(fit, out), loss_fit_plot(fit, out)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--out", required=True, help="directory for the PNG files")
    parser.add_argument("--summary", help="a study's summary.csv (experiments/run_study.sh)")
    parser.add_argument("--results", help="a study's results.csv: validation loss against training FLOPs")
    parser.add_argument("--exclude", default="", help="variants (comma-separated) left out of study.png")
    parser.add_argument("--scaling", help="the JSON of `moe scaling isoflop --json FILE`")
    args = parser.parse_args()
    if args.results and not args.runs:
        fail("--results plots runs: give their run directories")
    if not args.runs and not args.summary and not args.scaling:
        fail("nothing to plot: give run directories, --summary or --scaling")
    runs = [read_run(path) for path in args.runs]
    os.makedirs(args.out, exist_ok=True)
    written = []
    if runs:
        plots = [
            ("loss", "training loss", lambda r: [(r["label"], *field(r["steps"], "loss"))], False),
            ("val_loss", "validation loss", lambda r: [(r["label"], *field(r["evals"], "val_loss"))], False),
            ("lr", "learning rate", lambda r: [(r["label"], *field(r["steps"], "lr"))], False),
            ("tokens_per_s", "tokens/s", lambda r: [(r["label"], *field(r["steps"], "tokens_per_s"))], False),
            ("dropped_fraction", "dropped fraction of tokens", lambda r: moe_series(r, "dropped_fraction"), False),
            ("balance", "balancing terms", balance_series, False),
        ]
        for name, ylabel, series, log_y in plots:
            written.append(line_plot(runs, args.out, name, ylabel, series, log_y))
        written += [expert_load(run, args.out) for run in runs]
    if args.results:
        written.append(flops_plot(runs, args.results, args.out))
    if args.summary:
        written.append(study_plot(args.summary, args.out, [v for v in args.exclude.split(",") if v]))
    if args.scaling:
        written += scaling_plots(args.scaling, args.out)
    for path in written:
        if path:
            print(path)


if __name__ == "__main__":
    main()

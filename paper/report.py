"""REPORT.md: our results beside every quantitative claim of the paper's Sec. 3 (issue 6,
part 5).

    python -m paper.report [--results results] [--out figures/REPORT.md]

One table row per claim of ``paper.reference.CLAIMS``: the paper's value, ours, the
experiments, the tolerance and whether we agree; experiments absent from ``results/`` give
"not run" rows. Then what ran (models, tiers, sample counts), Table 1, the sections beyond
the paper (robust FV, network comparison: ``paper.beyond``), and the figures found
beside the report.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ifv.errors import UserError
from ifv.files import atomic_write, check_file
from paper.beyond import (
    comparison_markdown,
    comparison_table,
    robust_markdown,
    robust_table,
)
from paper.reference import (
    CLAIMS,
    EXPERIMENTS,
    PAPER_SAMPLES,
    Claim,
    NotApplicable,
    table1,
    table1_markdown,
)
from paper.runs import NotRun, Results

YES, NO, NOT_RUN, NA = "yes", "**no**", "not run", "n/a"


@dataclass(frozen=True)
class Row:
    """One claim evaluated against our results."""

    claim: Claim
    status: str
    ours: str


def evaluate(res: Results, claims: Sequence[Claim] = CLAIMS) -> list[Row]:
    """Each claim's verdict: yes, **no**, not run (an experiment is missing) or n/a (the
    data cannot answer it, or an error computing it, with the message)."""
    rows = []
    for claim in claims:
        try:
            m = claim.measure(res)
        except NotRun:
            missing = [e for e in claim.experiments if not res.has(e)]
            rows.append(Row(claim, NOT_RUN, f"missing {', '.join(missing)}"))
            continue
        except NotApplicable as e:
            rows.append(Row(claim, NA, str(e)))
            continue
        except Exception as e:  # unexpected data: one n/a row that says so, the rest goes on
            rows.append(Row(claim, NA, f"error: {type(e).__name__}: {e}"))
            continue
        rows.append(Row(claim, YES if claim.agrees(m.value) else NO, m.text))
    return rows


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(rows: Sequence[Row]) -> str:
    head = "| # | Sec. | claim | paper | ours | experiment | tolerance | agree? |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        c = r.claim
        cells = [str(i), c.section, c.claim, c.paper, r.ours, ", ".join(c.experiments),
                 c.tolerance, r.status]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join(lines)


def stamp() -> str:
    """The commit of the checkout the report is made in (``+ local changes`` where its tree
    differs from it) and today's date (UTC)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=30, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "no git commit"
    dirty = " + local changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"commit {commit}{dirty}, {time.strftime('%Y-%m-%d', time.gmtime())}"


def provenance(res: Results) -> str:
    """What ran: per experiment its model, tier, runs and samples (vs. the paper's)."""
    head = ("| experiment | network (paper) | model | tier | stand-in | runs | samples/run "
            "| paper samples | n_f | k | param |")
    lines = [head, "|" + "---|" * 11]
    for exp in res.experiments:
        df = res.best(exp)
        runs = df["run"].nunique() if "run" in df.columns else 1
        per_run = df.groupby("run")["sample"].nunique() if "run" in df.columns else \
            df["sample"].nunique()
        meta = EXPERIMENTS.get(exp)
        cells = [exp, f"{meta.short} ({meta.network})" if meta else "-",
                 ", ".join(sorted(df["model"].astype(str).unique())),
                 ", ".join(sorted(df["tier"].astype(str).unique())) if "tier" in df else "-",
                 "yes" if "stand_in" in df and df["stand_in"].any() else "no", str(runs),
                 str(int(per_run.median())) if runs > 1 else str(int(per_run.max())),
                 str(PAPER_SAMPLES.get(exp, "-")),
                 ",".join(str(v) for v in sorted(df["n_f"].unique())),
                 ",".join(f"{v:g}" for v in sorted(df["k"].unique())),
                 ",".join(sorted(df["param"].astype(str).unique()))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beyond(res: Results, out: Path) -> list[str]:
    """The sections beyond the paper's Sec. 3 (its Sec. 4): robust FV and network
    comparison, from ``paper.beyond``'s tables."""
    parts = ["## Beyond the paper: robust FV (Sec. 4)", "",
             "Realizations made with transformation robustness (and an image prior) and "
             "inverted by plain Grad-IFV and by the robust solver (docs/robust-ifv.md). "
             "Median angles in degrees over each run's samples; SSIM after re-optimization "
             "w.r.t. the robust prediction under the same transforms.", ""]
    try:
        parts.append(robust_markdown(robust_table(res)))
    except NotRun as e:
        parts.append(f"Not run ({e}; `ifv run experiment=NAME`, or `make reproduce`).")
    parts += ["", "## Beyond the paper: network comparison (Sec. 4)", "",
              "FV on network A, Grad-IFV on network B (`ifv compare`, docs/compare.md), beside "
              "the activation-correlation baseline of Li et al. 2015. Planted copies of A have "
              "a ground truth; two seeds do not (\"-\").", ""]
    try:
        parts.append(comparison_markdown(comparison_table(res)))
        maps = sorted((out.parent / "compare").glob("*.png"))
        if maps:
            parts += ["", "Heat maps and matched pairs: " + ", ".join(
                f"[{f.stem}]({os.path.relpath(f, out.parent)})" for f in maps) + "."]
    except NotRun as e:
        parts.append(f"Not run ({e}; `ifv compare comparison=NAME`, or `make reproduce`).")
    return [*parts, ""]


def render(res: Results, rows: Sequence[Row], out: Path) -> str:
    """The whole report; figure links relative to ``out``'s folder."""
    counts = {s: sum(r.status == s for r in rows) for s in (YES, NO, NOT_RUN, NA)}
    stand_in = any(res.best(e)["stand_in"].any() for e in res.experiments
                   if "stand_in" in res.frame(e).columns)
    parts = [
        "# Reproduction report: Inverting the Feature Visualization Process",
        "",
        f"Generated by `python -m paper.report` from `{res.root}/` ({stamp()}). "
        f"{len(rows)} claims of Sec. 3: {counts[YES]} agree, {counts[NO]} disagree, "
        f"{counts[NOT_RUN]} not run, {counts[NA]} not applicable.",
        "",
        "**Read with care.** " + (
            "Some or all runs use the *offline tier*: stand-in networks trained here in "
            "minutes on procedural images (column `stand_in` / `tier` of the results), not "
            "the paper's GoogLeNet (ImageNet), DenseNet-BC-100 (CIFAR-10) and SRNet. Their "
            "layers are smaller (e.g. the stand-in DenseNet's dense3 has 69 rather than 342 "
            "channels), so n_f thresholds of the paper are scaled to the layer size where a "
            "claim says so. " if stand_in else
            "All runs use the paper-tier networks. ") +
        "Runs made with the quick profile use fewer samples and optimization steps than the "
        "paper (compare the sample counts below). Agreement means the method behaves as the "
        "paper describes on the networks we ran, within the stated tolerance; timings depend "
        "on the hardware (the paper: one GTX 1080 Ti).",
        "",
        "## Claims",
        "",
        claims_table(rows) if rows else "No claims.",
        "",
        "How ours is computed (\"best space\": the critical space chosen per run, Sec. 3.5; "
        "the full space R^{n_f} where Algorithm 1 did not run):",
        "",
        *[f"{i}. {r.claim.method}" for i, r in enumerate(rows, 1)],
        "",
        "## What ran",
        "",
        provenance(res) if res.experiments else "No results collected (run `make collect`).",
        "",
        "## Table 1: seconds per sample (ours / paper)",
        "",
        table1_markdown(table1(res)),
        "",
        *beyond(res, out),
        "## Figures",
        "",
    ]
    figs = sorted(out.parent.glob("*.png")) + sorted((out.parent / "s4").glob("*.png"))
    if figs:
        parts += [f"- [{os.path.relpath(f, out.parent)}]({os.path.relpath(f, out.parent)})"
                  for f in figs]
    else:
        parts.append("None yet (run `make figures`).")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    ap = argparse.ArgumentParser(prog="python -m paper.report",
                                 description="Compare results/ with the paper's claims.")
    ap.add_argument("--results", default="results", help="collected results (default: results)")
    ap.add_argument("--out", default="figures/REPORT.md", help="report file")
    ap.add_argument("--beyond", action="store_true",
                    help="only the sections beyond the paper (robust FV, network comparison)")
    args = ap.parse_args(argv)
    try:
        check_file(args.out, "--out")
    except UserError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 2
    res = Results(args.results)
    if not res.root.is_dir():
        print(f"report: note: no folder {res.root}; every claim is 'not run' "
              "(run `make collect`)", file=sys.stderr)
    out = Path(args.out)
    if args.beyond:
        text = "\n".join([f"# Beyond the paper (Sec. 4), from `{res.root}/` ({stamp()})", "",
                          *beyond(res, out)])
        atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
        print(f"{out}: the sections beyond the paper")
        return 0
    rows = evaluate(res)
    text = render(res, rows, out)
    atomic_write(out, lambda p: p.write_text(text, encoding="utf-8"))
    counts = {s: sum(r.status == s for r in rows) for s in (YES, NO, NOT_RUN, NA)}
    print(f"{out}: {len(rows)} claims, {counts[YES]} agree, {counts[NO]} disagree, "
          f"{counts[NOT_RUN]} not run, {counts[NA]} n/a")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

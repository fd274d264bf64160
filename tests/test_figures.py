"""Tests for paper.figures and paper.report (issue 6, parts 4 and 5): the paper's
figures, Table 1 and REPORT.md from synthetic results with planted values."""

from __future__ import annotations

import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic
from matplotlib.image import imread

from paper.beyond import comparison_table, robust_table
from paper.collect import collect, collect_comparisons
from paper.figures import build, sphere_hoyer
from paper.figures import main as figures_main
from paper.reference import CLAIMS, TABLE1, NotApplicable, hf_share, table1
from paper.report import NA, NO, NOT_RUN, YES, evaluate
from paper.report import main as report_main
from paper.runs import NotRun, Results

ONES = np.ones(10) / np.sqrt(10)
_ORTH = np.eye(10)[0] - ONES[0] * ONES  # orthogonal to ONES
# a unit vector 30 degrees from (1, ..., 1): the DNcl complement claim must fail on it
TILTED = np.cos(np.radians(30)) * ONES + np.sin(np.radians(30)) * _ORTH / np.linalg.norm(_ORTH)


def _write_runs(root: Path) -> None:
    """exp01 (images), exp02 (critical spaces), an exp06 sweep, exp16/exp17 (images), exp22."""
    out = root / "outputs"
    synthetic.write_run(out / "exp01/r", synthetic.run_frame(
        "exp01", n=16, n_f=32, n_channels=512, model="googlenet_patterns", layer="inception4c",
        n_p=12288, spaces={32: 8.0}, angle_response=47.0, ssim_pred=0.9,
        times=(17.0, 0.7, 0.2, 0.7)), imgs=synthetic.images(32, n=4, size=16))
    df2 = synthetic.run_frame("exp02", n=16, spaces={10: 50.0, 9: 25.0}, layer="classifier",
                              alpha1=0.1)
    rng = np.random.default_rng(0)
    for col in ("t_fv", "t_jacobian", "t_predict", "t_reopt"):
        df2[col] = rng.uniform(0.01, 3.0, len(df2))
    synthetic.write_run(out / "exp02/r", df2,
                        critical=synthetic.critical_frame(df2, {9: [TILTED]}))
    for j, (n_f, center) in enumerate(((16, 10.0), (32, 15.0), (64, 80.0))):
        synthetic.write_run(out / f"exp06/k=0/{j}", synthetic.run_frame(
            "exp06", n=12, n_f=n_f, n_channels=69, k=0.0, spaces={n_f: center}))
    for exp, param, center in (("exp16", "rgb", 10.0), ("exp17", "fft", 12.0)):
        synthetic.write_run(out / exp / "r", synthetic.run_frame(
            exp, n=12, n_f=16, n_channels=69, param=param, spaces={16: center}),
            imgs=synthetic.images(16, n=4, size=12, seed=int(exp[-2:])))
    for exp, param, center in (("exp19", "rgb", 85.0), ("exp20", "fft", 86.0)):
        synthetic.write_run(out / exp / "r", synthetic.run_frame(
            exp, n=12, n_f=32, n_channels=512, model="googlenet_patterns",
            layer="inception4c", param=param, spaces={32: center}))
    synthetic.write_run(out / "exp22/r", synthetic.run_frame(
        "exp22", n=16, n_f=64, model="srnet_geometry", layer="block8",
        spaces={64: 2.0}, times=(10.0, 0.4, 0.01, 3.0)))
    synthetic.write_run(out / "dnde_robust/r", synthetic.run_frame(
        "dnde_robust", n=8, n_f=16, transforms="standard", spaces={16: 85.0},
        angle_robust=9.0, angle_response=60.0))
    # two runs of one comparison: the newer one (recovered 100%) is collected
    synthetic.write_comparison(out / "compare/dnde_permuted/old", "dnde_permuted",
                               recovered=0.5, mtime=1_000_000)
    synthetic.write_comparison(out / "compare/dnde_permuted/new", "dnde_permuted")
    synthetic.write_comparison(out / "compare/dnde_seeds/r", "dnde_seeds", recovered=None,
                               confident=0.0, agreement=0.25)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("figs")
    _write_runs(root)
    collect([root / "outputs"], root / "results", log=lambda s: None)
    collect_comparisons([root / "outputs"], root / "results", log=lambda s: None)
    lines: list[str] = []
    assert build(root / "results", root / "figures", log=lines.append)[1] == []
    assert report_main(["--results", str(root / "results"),
                        "--out", str(root / "figures/REPORT.md")]) == 0
    return root, lines


def _png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    img = imread(path)
    assert img.shape[0] > 150 and img.shape[1] > 150
    assert float(img[..., :3].std()) > 0.01  # something was drawn
    return img


def _pdf(path: Path, images: int) -> None:
    """A vector PDF: text in fonts, and exactly ``images`` embedded images."""
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:5] == b"%PDF-" and len(data) > 5000
    assert re.search(rb"/Type\s*/Font", data), path
    assert len(re.findall(rb"/Subtype\s*/Image", data)) == images, path


def test_figures_png_and_pdf(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    fig = root / "figures"
    # only realizations and difference maps are images: Fig. 4 shows the 4 realizations of
    # exp16 and exp17, Fig. S2 4 realizations of exp01 and their maps for 4 objectives
    images = {"fig4": 2 * 4, "figS2": 4 * (1 + 4)}
    for stem in ("fig2", "fig2a", "fig2b", "fig3", "fig4", "figS1", "figS2",
                 "s4/exp01", "s4/exp02", "s4/exp06", "s4/exp16", "s4/exp17", "s4/exp22",
                 "robust", "compare"):
        _png(fig / f"{stem}.png")
        _pdf(fig / f"{stem}.pdf", images.get(stem, 0))
    # Fig. 2 has columns (a) and (b) only: wider than one column, narrower than three
    w_a, w_all = _png(fig / "fig2a.png").shape[1], _png(fig / "fig2.png").shape[1]
    assert 1.8 * w_a < w_all < 2.5 * w_a
    # the S4 figure of exp02 has the trivariate panel, exp01's has not: wider
    assert _png(fig / "s4/exp02.png").shape[1] > _png(fig / "s4/exp01.png").shape[1]
    assert not (fig / "fig2c.png").exists()


def test_skip_lines_for_missing_experiments(built: tuple[Path, list[str]]) -> None:
    _, lines = built
    assert any(ln.startswith("skipped Fig. 2c: exp03 not in") for ln in lines)
    assert any(ln.startswith("skipped Fig. 4a: no images of exp19, exp20, exp21")
               for ln in lines)
    fig3 = [ln for ln in lines if ln.startswith("Fig. 3:")]
    assert len(fig3) == 1 and "exp07" in fig3[0] and "exp06" not in fig3[0]
    assert not any("Fig. 2a" in ln or "Fig. S" in ln or "Table 1" in ln for ln in lines)


def test_empty_results_build_only_fig_s1(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert figures_main(["--results", str(tmp_path / "none"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    skipped = [ln for ln in out if ln.startswith("skipped")]
    assert [ln.split(":")[0] for ln in skipped] == [
        "skipped Fig. 2", "skipped Fig. 3", "skipped Fig. 4", "skipped Fig. S2",
        "skipped Supp. S4 diagrams", "skipped Table 1", "skipped robust FV",
        "skipped network comparison"]
    assert sorted(p.name for p in tmp_path.glob("*.p*")) == ["figS1.pdf", "figS1.png"]


def test_an_output_that_is_no_regular_file_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out a file: one line, exit 2; figS1.png a link: that figure fails in one line and
    the link and its target are left as they were."""
    (tmp_path / "target").write_text("keep")
    assert figures_main(["--results", str(tmp_path / "none"),
                         "--out", str(tmp_path / "target")]) == 2
    err = capsys.readouterr().err
    assert err == (f"figures: error: cannot write --out {tmp_path / 'target'}: "
                   f"{tmp_path / 'target'} is not a folder; choose a folder that can be "
                   "written\n")
    out = tmp_path / "figures"
    out.mkdir()
    (out / "figS1.png").symlink_to(tmp_path / "target")
    assert figures_main(["--results", str(tmp_path / "none"), "--out", str(out)]) == 1
    failed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAILED")]
    assert failed == [f"FAILED Fig. S1: UserError: output file {out / 'figS1.png'} is a "
                      "symbolic link, not a regular file; ifv writes only regular files (it "
                      "would replace it): choose another path"]
    assert (out / "figS1.png").is_symlink() and (tmp_path / "target").read_text() == "keep"
    assert report_main(["--results", str(tmp_path / "none"),
                        "--out", str(out / "figS1.png")]) == 2
    assert capsys.readouterr().err.startswith(
        f"report: error: --out {out / 'figS1.png'} is a symbolic link, not a regular file")
    assert (tmp_path / "target").read_text() == "keep"


def test_fig_s1_hoyer_statistics() -> None:
    values = sphere_hoyer(n=10_000)
    # independent: Gaussian directions in numpy, Hoyer's formula written out
    rng = np.random.default_rng(123)
    for dim in (2, 10, 100):
        x = rng.standard_normal((20_000, dim))
        ratio = np.abs(x).sum(1) / np.linalg.norm(x, axis=1)
        ref = (np.sqrt(dim) - ratio) / (np.sqrt(dim) - 1)
        v = values[dim]
        assert v.shape == (10_000,) and v.min() >= -1e-12 and v.max() <= 1 + 1e-12
        assert abs(v.mean() - ref.mean()) < 0.01
        assert abs(np.median(v) - np.median(ref)) < 0.015
    # in 2 dimensions the mean is known in closed form: E(|cos t| + |sin t|) = 4 / pi
    exact = (math.sqrt(2) - 4 / math.pi) / (math.sqrt(2) - 1)
    assert abs(values[2].mean() - exact) < 0.01
    # sparse vectors vanish as the dimension grows (Supp. S2)
    assert (values[2] >= 0.9).mean() > 0.03 and (values[100] >= 0.5).mean() == 0.0


def test_table1_means(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    res = Results(root / "results")
    df = table1(res).set_index("model")
    raw = {e: pd.read_parquet(root / f"results/{e}.parquet") for e in ("exp01", "exp02", "exp16",
                                                                       "exp22")}
    for model, exp in (("GN4c", "exp01"), ("DN[4]cl", "exp02"), ("DNde", "exp16"),
                       ("SRNet", "exp22")):
        rows = raw[exp][raw[exp]["best_space"]]
        for col in ("t_fv", "t_jacobian", "t_predict", "t_reopt"):
            assert df.loc[model, col] == pytest.approx(rows[col].mean())
        assert df.loc[model, "experiments"] == exp
    # exp02's times vary per row: the best-space mean is not the mean of all rows
    assert df.loc["DN[4]cl", "t_fv"] != pytest.approx(raw["exp02"]["t_fv"].mean())
    assert df.loc["GN4c", "n_p"] == "12288" and df.loc["SRNet", "n_f"] == "64"
    paper = {p.model: p.times for p in TABLE1}
    assert tuple(df.loc["GN4c", [f"paper_{c}" for c in ("t_fv", "t_jacobian", "t_predict",
                                                          "t_reopt")]]) == paper["GN4c"]
    md = (root / "figures/table1.md").read_text()
    assert "| GN4c | 12288 / 224^2*3 | 32 / 512 | 17.00 / 17.3 |" in md
    csv = pd.read_csv(root / "figures/table1.csv")
    assert csv.set_index("model").loc["SRNet", "t_reopt"] == pytest.approx(3.0)


def test_table1_dnde_falls_back_to_the_largest_sweep_n_f(tmp_path: Path) -> None:
    for n_f, t in ((16, 1.0), (69, 5.0)):
        df = synthetic.run_frame("exp11", n=4, n_f=n_f, times=(t, 0.1, 0.01, 0.5))
        synthetic.write_run(tmp_path / f"out/{n_f}", df)
    collect([tmp_path / "out"], tmp_path / "results", log=lambda s: None)
    row = table1(Results(tmp_path / "results")).set_index("model").loc["DNde"]
    assert row["experiments"] == "exp11 (n_f=69)" and row["t_fv"] == pytest.approx(5.0)
    assert math.isnan(table1(Results(tmp_path / "results")).set_index("model")
                      .loc["GN4c", "t_fv"])


def test_report_verdicts_on_planted_values(built: tuple[Path, list[str]]) -> None:
    root, _ = built
    rows = {r.claim.key: r for r in evaluate(Results(root / "results"))}
    assert len(rows) == len(CLAIMS)
    expected = {
        "simple.pred": YES,              # 8 degrees <= 15
        "simple.response": YES,          # 47 degrees in [30, 60]
        "simple.reopt": YES,
        "critical.best_dncl": YES,       # the 9-dim space has the lower median
        "critical.dims_dncl": YES,
        "critical.pred_dncl": NO,        # 25 degrees > 15
        "critical.ones_dncl": NO,        # the planted complement is 30 degrees off
        "critical.full_dncl": YES,       # 50 degrees >= 30
        "critical.alpha2_dncl": NO,      # alpha_2 = 0.1
        "k0.dnde_160": YES,              # n_f = 32: 15 vs 45 degrees
        "k0.dnde_288": YES,              # n_f = 64: all at 80 degrees
        "param.exp17": YES,              # 12 vs 10 degrees
        "param.exp18": NOT_RUN,
        "param.exp20": NA,               # P_rgb fails itself (85 degrees)
        "param.exp21": NOT_RUN,
        "critical.dims_dn4cl": NOT_RUN,
        "srnet.exp22": YES,
        "srnet.exp23": NOT_RUN,
        "time.GN4c": YES,
    }
    for key, status in expected.items():
        assert rows[key].status == status, (key, rows[key])
    assert "30.0" in rows["critical.ones_dncl"].ours
    assert "n_f=32" in rows["k0.dnde_160"].ours and "scaled to 69" in rows["k0.dnde_160"].ours
    assert rows["param.exp18"].ours == "missing exp18"
    assert "P_rgb fails itself" in rows["param.exp20"].ours


def test_report_file(built: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = built
    text = (root / "figures/REPORT.md").read_text()
    head = subprocess.run(["git", "-C", str(Path(__file__).parents[1]), "rev-parse",
                           "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = re.search(r"\(commit (\S+)( \+ local changes)?, (\d{4}-\d\d-\d\d)\)", text)
    assert stamp is not None  # the commit and the date the report was made from
    assert stamp[1] == (head or "no") and stamp[3] == time.strftime("%Y-%m-%d", time.gmtime())
    table = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.endswith(" |")
             and ln.split("|")[1].strip().isdigit()]
    assert len(table) == len(CLAIMS)
    by_claim = {ln.split("|")[3].strip(): ln.split("|")[-2].strip() for ln in table}
    assert by_claim["SRNet, k = 2, mask in [-1, 1]: targets recovered up to 5°"] == NOT_RUN
    assert by_claim["DNcl: Grad-IFV performs well in the best space"] == NO
    assert "stand-in" in text and "quick profile" in text
    assert "[fig2.png](fig2.png)" in text and "[s4/exp02.png](s4/exp02.png)" in text
    assert "[robust.png](robust.png)" in text and "[compare.png](compare.png)" in text
    # without any results every claim is "not run", and the report still gets written
    assert report_main(["--results", str(tmp_path / "none"),
                        "--out", str(tmp_path / "R.md")]) == 0
    empty = (tmp_path / "R.md").read_text()
    assert f"{len(CLAIMS)} not run" in empty


def test_smoothness_claims_on_planted_realizations(tmp_path: Path) -> None:
    """Fig. 4's claim: P_ffte's stored realizations must have at most 0.8 of P_rgb's
    high-frequency share; planted smooth and noisy images decide it both ways."""
    rng = np.random.default_rng(3)
    smooth = synthetic.images(8, n=4, size=16)
    noisy = {**smooth, "before": rng.uniform(0, 1, smooth["before"].shape).astype(np.float16)}
    runs = {"exp16": ("rgb", noisy), "exp18": ("ffte", smooth),   # smoother: yes
            "exp19": ("rgb", smooth), "exp21": ("ffte", noisy),   # rougher: no
            "exp17": ("fft", None)}                               # no images
    for exp, (param, imgs) in runs.items():
        synthetic.write_run(tmp_path / "out" / exp, synthetic.run_frame(
            exp, n=4, n_f=8, param=param), imgs=imgs)
    collect([tmp_path / "out"], tmp_path / "results", log=lambda s: None)
    res = Results(tmp_path / "results")
    rows = {r.claim.key: r for r in evaluate(res)}
    assert rows["smooth.exp18"].status == YES and rows["smooth.exp21"].status == NO
    assert "ratio 0.0" in rows["smooth.exp18"].ours
    assert hf_share(res, "exp16") > 0.7 and hf_share(res, "exp19") < 0.1
    with pytest.raises(NotApplicable, match="no stored realizations"):
        hf_share(res, "exp17")
    with pytest.raises(NotRun):
        hf_share(res, "exp20")
    lines: list[str] = []
    build(tmp_path / "results", tmp_path / "figures", log=lines.append)
    _png(tmp_path / "figures/fig4.png")


def test_report_survives_unexpected_data(tmp_path: Path) -> None:
    """alpha vectors of two n_f in one experiment: the alpha claims say so, no crash."""
    for n_f in (10, 12):
        synthetic.write_run(tmp_path / f"out/{n_f}", synthetic.run_frame(
            "exp08", n=4, n_f=n_f, k=0.0, seed=n_f))
    collect([tmp_path / "out"], tmp_path / "results", log=lambda s: None)
    rows = {r.claim.key: r for r in evaluate(Results(tmp_path / "results"))}
    assert rows["k0.maxmean"].status == "n/a" and "different n_f" in rows["k0.maxmean"].ours
    assert rows["k0.mean"].status == NOT_RUN


@pytest.mark.parametrize(("centers", "onset", "status"), [
    ({32: 10.0, 256: 40.0, 512: 80.0}, "between n_f=32 and 256", YES),  # the quick sweep
    ({32: 10.0, 64: 12.0, 96: 14.0, 160: 30.0}, "between n_f=96 and 160", YES),
    ({32: 10.0, 64: 30.0, 96: 40.0}, "between n_f=32 and 64", YES),
    ({32: 10.0, 128: 12.0, 160: 30.0}, "between n_f=128 and 160", NO),
    ({32: 10.0, 96: 12.0, 512: 15.0}, "none up to n_f=512", NO),
])
def test_gn4c_onset_brackets_96(tmp_path: Path, centers: dict[int, float], onset: str,
                                status: str) -> None:
    for n_f, center in centers.items():
        synthetic.write_run(tmp_path / f"out/{n_f}", synthetic.run_frame(
            "exp07", n=4, n_f=n_f, n_channels=512, k=0.0, model="googlenet_patterns",
            layer="inception4c", spaces={n_f: center}))
    collect([tmp_path / "out"], tmp_path / "results", log=lambda s: None)
    rows = {r.claim.key: r for r in evaluate(Results(tmp_path / "results"))}
    assert rows["k0.gn4c_onset"].ours == onset and rows["k0.gn4c_onset"].status == status


def test_beyond_the_paper_tables_and_sections(built: tuple[Path, list[str]]) -> None:
    """The robust experiment's planted medians and the newest comparison's shares reach
    REPORT.md's sections beyond the paper; the heat maps are copied beside it."""
    root, _ = built
    res = Results(root / "results")
    rob = robust_table(res)
    assert list(rob["experiment"]) == ["dnde_robust"]
    r = rob.iloc[0]
    assert (r["angle_pred"], r["angle_robust"], r["angle_response"]) == \
        pytest.approx((85.0, 9.0, 60.0))
    # robust angles 7..11 deg, evenly spaced over 8 rows: 6 of them within 10 deg
    assert r["robust_within"] == pytest.approx(0.75)
    assert r["transforms"] == "standard" and r["samples"] == 8
    comp = comparison_table(res)
    assert list(comp["comparison"]) == ["dnde_permuted", "dnde_seeds"]
    assert comp["recovered"].iloc[0] == 1.0  # the newer run, not the old 50%
    assert math.isnan(comp["recovered"].iloc[1])
    text = (root / "figures/REPORT.md").read_text()
    beyond = text[text.index("## Beyond the paper: robust FV"):text.index("## Figures")]
    row = next(ln for ln in beyond.splitlines() if ln.startswith("| dnde_robust |"))
    assert "| 85.0 | 9.0 | 60.0 | 80.0 | 75% |" in row and "standard" in row
    seeds = next(ln for ln in beyond.splitlines() if ln.startswith("| dnde_seeds |"))
    assert "| - | - | 0% | 25% |" in seeds
    assert "gn4c_robust" not in beyond  # only what was collected
    for name in ("dnde_permuted", "dnde_seeds"):
        assert (root / f"figures/compare/{name}.correspondence.png").is_file()
        assert f"compare/{name}.correspondence.png" in beyond


def test_beyond_only(built: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = built
    out = tmp_path / "BEYOND.md"
    assert report_main(["--results", str(root / "results"), "--out", str(out),
                        "--beyond"]) == 0
    text = out.read_text()
    assert text.startswith("# Beyond the paper (Sec. 4)") and "| dnde_robust |" in text
    assert "## Claims" not in text


def test_beyond_sections_say_not_run(tmp_path: Path) -> None:
    assert report_main(["--results", str(tmp_path / "none"),
                        "--out", str(tmp_path / "R.md")]) == 0
    text = (tmp_path / "R.md").read_text()
    assert "Not run (dnde_robust, dnde_robust_tv" in text
    assert "Not run (dnde_permuted" in text
    with pytest.raises(NotRun):
        robust_table(Results(tmp_path / "none"))

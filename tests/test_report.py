"""`hpo report`: one offline HTML file with the sweep's plots, checked in the file and in a real browser.

The browser is Debian's headless Chromium (`.ci/run` installs it); without it the browser test is
skipped and says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from pathlib import Path

from conftest import TINY, free_port, run_hpo, write
from hpo.htmlreport import figure

FIGURES = ("history", "curves", "parallel", "importance", "timeline")


# The tiny digits sweep without early termination (every trial complete: every figure has data).
SWEEP = TINY.replace("early_terminate: {type: hyperband, min_iter: 1, eta: 3}\n", "").replace(
    "epochs: {value: 9}", "epochs: {value: 3}")


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """10 trials on 2 workers (enough for the importance plot), report written at the run's end."""
    tmp = tmp_path_factory.mktemp("report")
    assert SWEEP != TINY and "early_terminate" not in SWEEP
    write(tmp / "sweep.yaml", SWEEP)
    out = run_hpo("run", "sweep.yaml", "--workers", "2", "--trials", "10", "--no-progress", cwd=tmp, check=True)
    return tmp, out


def test_a_run_ends_with_a_self_contained_report(swept):
    tmp, out = swept
    page = (tmp / "runs" / "tiny" / "report.html").read_text()
    for name in FIGURES:
        assert f'id="fig-{name}"' in page, name
    tags = re.findall(r"<script\b[^>]*>", page)
    assert tags and not [t for t in tags if "src=" in t], tags  # plotly.js is inline: the file opens offline
    assert len(page) < 8_000_000
    history = figure(page, "history")
    best = max(y for trace in history["data"] if trace["name"] == "complete" for y in trace["y"])
    assert best == pytest.approx(float(out.stdout.split('"best_value": ')[1].split(",")[0]))
    assert "PED-ANOVA" in page  # says which importance evaluator (Optuna 5's default)
    # constants (epochs, batch_size: `value:`) are left out; the metric names the axis and the colour bar
    parallel = figure(page, "parallel")
    assert parallel["layout"]["xaxis"]["ticktext"] == ["val_acc", "hidden", "lr", "optimizer"]
    assert [t["marker"]["colorbar"]["title"]["text"] for t in parallel["data"] if "colorbar" in t.get("marker", {})] == ["val_acc"]
    importance = figure(page, "importance")
    assert {y for t in importance["data"] for y in t["y"]} == {"hidden", "lr", "optimizer"}
    assert "val_acc" in json.dumps(importance["layout"]["xaxis"]["title"])
    # the top trials: one column per parameter that varied, each MLflow run a link to its page in the MLflow UI
    head = re.search(r"<h2>Top trials</h2><table><tr>(.*?)</tr>", page)[1]
    assert re.findall(r"<th>(.*?)</th>", head) == ["trial", "val_acc", "hidden", "lr", "optimizer", "MLflow run"]
    links = re.findall(r'<a href="http://127.0.0.1:5000/#/experiments/1/runs/(\w+)">\1</a>', page)
    assert len(links) == 10, links
    # one copy on disk: the file beside the sweep and the parent run's artifact are the same file (a hard link)
    (artifact,) = (tmp / "runs" / "tiny" / "artifacts").rglob("report.html")
    assert artifact.stat().st_ino == (tmp / "runs" / "tiny" / "report.html").stat().st_ino


def test_hpo_report_rewrites_it_and_prints_where(swept):
    tmp, _ = swept
    path = tmp / "runs" / "tiny" / "report.html"
    path.unlink()
    out = run_hpo("report", "sweep.yaml", cwd=tmp, check=True)
    assert out.stdout.strip() == "runs/tiny/report.html" and path.is_file()


def test_a_report_of_a_sweep_that_never_ran_is_one_line(tmp_path):
    write(tmp_path / "sweep.yaml", TINY)
    out = run_hpo("report", "sweep.yaml", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("--storage: no sweep at"), out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # nothing written


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


NEEDS_CHROMIUM = pytest.mark.skipif(chromium() is None,
                                    reason="no Chromium here (`.ci/run` installs Debian's chromium)")


def browser(tmp_path, url: str, budget_ms: int = 10000) -> tuple[list[str], subprocess.CompletedProcess]:
    """Headless Chromium's flags, and the DOM of `url` after its scripts ran (`budget_ms` of virtual time)."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1300,2800",
             f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return flags, dom


def serve(argv: list[str], cwd, port: int, path: str = "/") -> subprocess.Popen:
    """A server started for a test; returns once it answers on `path`."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"{argv[:4]} did not answer on port {port}: {proc.communicate()[1][-2000:]}")


@NEEDS_CHROMIUM
def test_the_report_renders_in_chromium_with_no_console_errors(swept, tmp_path):
    tmp, _ = swept
    url = (tmp / "runs" / "tiny" / "report.html").resolve().as_uri()
    flags, dom = browser(tmp_path, url)
    # Scripts ran: each figure's div now holds plotly's rendered SVG.
    assert dom.stdout.count('class="main-svg"') >= len(FIGURES), dom.stdout[:2000]
    for name in FIGURES:
        assert f'id="fig-{name}" class="plotly-graph-div js-plotly-plot"' in dom.stdout.replace("'", '"'), name
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not [line for line in console if "rror" in line or "Uncaught" in line], console
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 50_000  # kept in the test's folder to look at


@NEEDS_CHROMIUM
def test_optuna_dashboard_shows_the_study_in_chromium(swept, tmp_path):
    """The page `hpo dashboard` serves draws the finished study (its history plot rendered)."""
    tmp, _ = swept
    port = free_port()
    proc = serve([sys.executable, "-m", "hpo", "dashboard", "sweep.yaml", "--port", str(port)], tmp, port, "/api/studies")
    try:
        _, dom = browser(tmp_path, f"http://127.0.0.1:{port}/dashboard/studies/0", 15000)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "tiny" in dom.stdout and dom.stdout.count('class="main-svg"') >= 1, dom.stdout[-3000:]


@NEEDS_CHROMIUM
def test_optuna_dashboard_opens_a_sweep_without_a_metric_in_chromium(tmp_path):
    """A grid sweep with no `metric:` (W&B allows it): its study page loads (it answered 500 when COMPLETE
    trials held no value) and draws the trials, each valued by its run time (`_runtime`)."""
    write(tmp_path / "sweep.yaml", "name: nometric\nmethod: grid\nparameters:\n  x: {values: [1, 2, 3]}\n")
    run_hpo("run", "sweep.yaml", "--workers", "1", "--trainer", "fault_trainers:trivial", "--no-progress",
            cwd=tmp_path, env={"PYTHONPATH": str(Path(__file__).parent)}, check=True)
    port = free_port()
    proc = serve([sys.executable, "-m", "hpo", "dashboard", "sweep.yaml", "--port", str(port)], tmp_path, port,
                 "/api/studies")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/0", timeout=30) as resp:
            assert resp.status == 200
        _, dom = browser(tmp_path, f"http://127.0.0.1:{port}/dashboard/studies/0", 15000)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "nometric" in dom.stdout and "_runtime" in dom.stdout, dom.stdout[-3000:]
    assert dom.stdout.count('class="main-svg"') >= 1, dom.stdout[-3000:]


@NEEDS_CHROMIUM
def test_the_mlflow_ui_lists_the_parent_and_its_children_in_chromium(swept, tmp_path):
    """`mlflow ui` on the sweep's store, at the runs-table link the summary prints: the parent run is
    listed with its 10 children under it (11 matching runs)."""
    tmp, _ = swept
    port = free_port()
    db = (tmp / "runs" / "tiny" / "mlflow.db").resolve()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = serve([mlflow, "ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], tmp, port)
    try:
        _, dom = browser(tmp_path, f"http://127.0.0.1:{port}/#/experiments/1/runs", 20000)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)))
    assert "tiny" in text and "11 matching runs" in text, text[:3000]


def test_a_large_study_is_drawn_from_its_best_trials_and_a_spread_of_the_rest(tmp_path, monkeypatch):
    """Past CAP trials the curves, parallel coordinates and importances draw the best CAP/2 and an even
    spread of the others, and the timeline the latest TIMELINE_CAP trials; the report says so, and the best
    trial is always drawn. (Caps lowered here; the real ones, 1,000 and 2,000, are timed in bench/.)"""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from hpo import htmlreport
    from hpo import spec as specmod

    monkeypatch.setattr(htmlreport, "CAP", 40)
    monkeypatch.setattr(htmlreport, "TIMELINE_CAP", 60)
    study = optuna.create_study(study_name="big", direction="maximize",
                                storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    values = [((i * 37) % 200) / 200 for i in range(200)]
    values[123] = 2.0  # the best, far from the first trials
    study.add_trials([create_trial(state=TrialState.COMPLETE, params={"x": v, "y": i / 200}, values=[v],
                                   distributions={"x": FloatDistribution(0, 3), "y": FloatDistribution(0, 1)},
                                   intermediate_values={1: v / 2, 2: v}, user_attrs={"hpo.worker": "cpu0"})
                      for i, v in enumerate(values)])
    spec = specmod.from_dict({"name": "big", "method": "random", "metric": {"name": "score", "goal": "maximize"},
                              "parameters": {"x": {"min": 0.0, "max": 3.0}, "y": {"min": 0.0, "max": 1.0}}})
    page = htmlreport.build(study, spec, [])
    assert "40 of 200 trials drawn: the best 20 and an even spread of the rest" in page
    assert "40 of 200 complete trials" in page
    curve_trials = {n for trace in figure(page, "curves")["data"] for n in trace.get("customdata", []) if n is not None}
    assert len(curve_trials) == 40 and 123 in curve_trials
    best20 = sorted(range(200), key=lambda i: values[i], reverse=True)[:20]
    assert set(best20) <= curve_trials, "the best trials are all drawn"
    lines = [tr for tr in figure(page, "parallel")["data"] if tr.get("mode") == "lines"]  # Optuna 5: a line per trial
    assert len(lines) == 40, len(lines)
    history = figure(page, "history")["data"]
    assert sum(len(tr["x"]) for tr in history if tr.get("mode") == "markers") == 200, "the history shows every trial"

"""Bad input gets one clear line, exit code 2, and nothing written (DESIGN.md, decision 8).

Every case runs the real CLI, `python -m hpo run FILE ...`, in a fresh folder. A few also
go through `hpo validate`, which lists every problem, one per line.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import run_hpo

RUN_FLAGS = ["--workers", "1", "--trials", "2", "--no-progress"]
GOOD = """
    method: random
    metric: {name: val_loss}
    parameters:
      lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-1}
      hidden: {values: [8, 16]}
"""


def bomb() -> str:
    lines = ["method: random", 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    lines += ["parameters:", "  x: {value: *i}"]
    return "\n".join(lines) + "\n"


@dataclass
class Case:
    id: str
    prefix: str  # what the one line on stderr starts with
    text: str | bytes | None = None  # sweep.yaml's content; None: no sweep.yaml
    files: dict[str, str | bytes] = field(default_factory=dict)  # more files; a name ending in / is a folder
    args: list[str] = field(default_factory=list)  # replaces "sweep.yaml" on the command line when it has a file
    flags: list[str] = field(default_factory=list)  # after RUN_FLAGS, so they win
    validate: bool = False  # also run `hpo validate` on it


def sweep(params: str, top: str = "method: random") -> str:
    return textwrap.dedent(top).strip() + "\nparameters:\n" + textwrap.indent(textwrap.dedent(params).strip(), "  ")


CASES = [
    # --- YAML that does not parse, or is not a mapping
    Case("yaml-unclosed-flow", "sweep.yaml: line ", "method: random\nparameters:\n  lr: {min: 0.1, max: 1\n",
         validate=True),
    Case("yaml-bad-indent", "sweep.yaml: line ", "method: random\nparameters:\n  lr:\n    min: 0.1\n   max: 1.0\n"),
    Case("yaml-tab-indent", "sweep.yaml: line ", "method: random\nparameters:\n\tlr: {min: 0.1, max: 1.0}\n"),
    Case("yaml-duplicate-key", "sweep.yaml: line 4: key 'lr' appears twice",
         sweep("lr: {min: 0.1, max: 1.0}\nlr: {values: [1]}")),
    Case("yaml-two-documents", "sweep.yaml: line 7: a second YAML document", textwrap.dedent(GOOD) + "---\nmethod: grid\n"),
    Case("top-level-list", "sweep.yaml: must be a mapping", "- method: random\n- parameters: {}\n", validate=True),
    Case("top-level-scalar", "sweep.yaml: must be a mapping", "just some text\n"),
    Case("empty-file", "sweep.yaml: must be a mapping", ""),
    Case("unsafe-python-apply", "sweep.yaml: line 3: tag !!python/object/apply:os.system is not allowed",
         'method: random\nparameters:\n  x: !!python/object/apply:os.system ["touch PWNED"]\n', validate=True),
    Case("unsafe-python-name", "sweep.yaml: line 1: tag !!python/name:os.system is not allowed",
         "method: !!python/name:os.system\nparameters:\n  x: {values: [1]}\n"),
    Case("unsafe-python-object-new", "sweep.yaml: line 2: tag !!python/object/new:subprocess.Popen is not",
         'method: random\nparameters: !!python/object/new:subprocess.Popen [["touch", "PWNED"]]\n'),
    Case("alias-bomb", "sweep.yaml: more than 100,000 values", bomb()),
    Case("recursive-alias", "sweep.yaml: an alias (*ref) points into the block that contains it",
         "method: random\nparameters: &p\n  x: {values: [1]}\n  y: *p\n"),
    Case("not-utf8", "sweep.yaml: not UTF-8 text", b"method: random\nparameters:\n  x: {values: [\xff\xfe]}\n"),
    Case("nul-bytes", "sweep.yaml: contains NUL bytes", b"method: random\x00\nparameters:\n  x: {values: [1]}\n"),
    Case("several-megabytes", "sweep.yaml: more than 1,048,576 bytes", textwrap.dedent(GOOD) + ("# padding " * 60 + "\n") * 6000),
    Case("directory", "sweep.yaml: is a folder", None, files={"sweep.yaml/": ""}),
    Case("missing-file", "nope.yaml: no such file", None, args=["nope.yaml"], validate=True),
    # --- the W&B schema
    Case("missing-method", "method: required", "parameters:\n  x: {values: [1]}\n", validate=True),
    Case("missing-parameters", "parameters: required", "method: random\n"),
    Case("empty-parameters", "parameters: empty", "method: random\nparameters:\n"),
    Case("unknown-method", "method: 'smart' is not one of", sweep("x: {values: [1]}", "method: smart")),
    Case("unknown-top-level-key", "backend: unknown key", sweep("x: {values: [1]}", "method: random\nbackend: ray")),
    Case("unknown-param-key", "parameters.lr.step: unknown key for uniform", sweep("lr: {min: 0.1, max: 1.0, step: 2}")),
    Case("unknown-distribution", "parameters.lr.distribution: unknown distribution 'gaussian'",
         sweep("lr: {distribution: gaussian, mu: 0}")),
    Case("wrong-type-min", "parameters.lr.min: [0] is not of type 'number'", sweep("lr: {min: [0], max: 1.0}")),
    Case("wrong-type-values", "parameters.x.values: 3 is not a list; did you mean value: 3?", sweep("x: {values: 3}")),
    Case("parameter-not-mapping", "parameters.x: must be a mapping", sweep("x: 0.1")),
    Case("metric-a-string", "metric: 'loss' is not of type 'object'", sweep("x: {values: [1]}", "method: random\nmetric: loss")),
    Case("quoted-1e-4", "parameters.lr.min: '1e-4' is text (in quotes)", sweep("lr: {min: '1e-4', max: 1.0e-1}"),
         validate=True),
    Case("date-value", "parameters.day.value: 2024-01-02 is a date", sweep("day: {value: 2024-01-02}")),
    # --- semantic checks
    Case("min-greater-than-max", "parameters.lr.min: must be less than max", sweep("lr: {min: 1.0, max: 0.1}"),
         validate=True),
    Case("log-bound-zero", "parameters.lr.min: must be > 0", sweep("lr: {distribution: log_uniform_values, min: 0, max: 1}")),
    Case("int-uniform-float-bound", "parameters.n.min: 0.5 is not of type 'integer'",
         sweep("n: {distribution: int_uniform, min: 0.5, max: 4}")),
    Case("q-zero", "parameters.n.q: must be > 0", sweep("n: {distribution: q_uniform, min: 0, max: 4, q: 0}")),
    Case("empty-values", "parameters.x.values: [] should be non-empty", sweep("x: {values: []}")),
    Case("probabilities-sum", "parameters.x.probabilities: must sum to 1",
         sweep("x: {values: [a, b], probabilities: [0.5, 0.6]}")),
    Case("nested-bad-inner", "parameters.outer.inner.max: required",
         sweep("outer:\n  parameters:\n    inner: {distribution: uniform, min: 0.1}"), validate=True),
    Case("nested-deeper-bad-inner", "parameters.outer.mid.inner.min: must be less than max",
         sweep("outer:\n  parameters:\n    mid:\n      parameters:\n        inner: {min: 5, max: 1}")),
    Case("hyperband-no-min-iter", "early_terminate: hyperband needs min_iter, or max_iter and s",
         sweep("x: {values: [1]}", "method: random\nmetric: {name: loss}\nearly_terminate: {type: hyperband, eta: 3}"),
         validate=True),
    Case("hyperband-eta-1", "early_terminate.eta: must be at least 2",
         sweep("x: {values: [1]}", "method: random\nmetric: {name: loss}\n"
                                   "early_terminate: {type: hyperband, min_iter: 1, eta: 1}")),
    Case("hyperband-unknown-key", "early_terminate.brackets: unknown key",
         sweep("x: {values: [1]}", "method: random\nmetric: {name: loss}\n"
                                   "early_terminate: {type: hyperband, min_iter: 1, brackets: 2}")),
    Case("hyperband-no-bands", "early_terminate: max_iter 2 with eta 3 and s 1 gives no stop points",
         sweep("x: {values: [1]}", "method: random\nmetric: {name: loss}\n"
                                   "early_terminate: {type: hyperband, max_iter: 2, s: 1}")),
    Case("hyperband-without-metric", "metric.name: required with early_terminate",
         sweep("x: {values: [1]}", "method: random\nearly_terminate: {type: hyperband, min_iter: 1}")),
    Case("bayes-without-metric", "metric.name: required with method bayes", sweep("x: {values: [1]}", "method: bayes")),
    Case("run-cap-0", "run_cap: 0 is less than the minimum of 1", sweep("x: {values: [1]}", "method: random\nrun_cap: 0")),
    Case("grid-of-billions", "parameters: the grid has 100,000,000,000 points",
         sweep("a: {min: 1, max: 100000}\nb: {min: 1, max: 100000}\nc: {values: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}",
               "method: grid")),
    Case("grid-of-continuous", "parameters.lr: grid search needs", sweep("lr: {min: 0.0, max: 1.0}", "method: grid")),
    Case("name-semicolon", "parameters.a;rm -rf ~: bad parameter name", sweep('"a;rm -rf ~": {values: [1]}')),
    Case("name-subshell", "parameters.$(touch PWNED): bad parameter name", sweep('"$(touch PWNED)": {values: [1]}')),
    Case("name-newline", "parameters.x\\n: bad parameter name 'x\\n'", sweep('"x\\n": {values: [1]}')),
    Case("top-key-newline", "a\\nb: unknown key", sweep("x: {values: [1]}", 'method: random\n"a\\nb": 1')),
    # --- a broken --space file
    Case("space-broken-yaml", "space.yaml: line ", GOOD, files={"space.yaml": "parameters:\n  lr: [min: 0.1\n"},
         flags=["--space", "space.yaml"]),
    Case("space-a-list", "space.yaml: must be a mapping of parameters", GOOD, files={"space.yaml": "- lr\n- hidden\n"},
         flags=["--space", "space.yaml"]),
    Case("space-bad-param", "parameters.lr.max: required", GOOD,
         files={"space.yaml": "parameters:\n  lr: {distribution: uniform, min: 0.1}\n"}, flags=["--space", "space.yaml"]),
    Case("space-missing", "gone.yaml: no such file", GOOD, flags=["--space", "gone.yaml"]),
    # --- bad command-line values (the sweep file is fine)
    Case("trials-0", "--trials: must be at least 1 (got 0)", GOOD, flags=["--trials", "0"], validate=True),
    Case("trials-text", "--trials: invalid int value: 'many'", GOOD, flags=["--trials", "many"]),
    Case("gpus-abc", "--gpus: expected auto, none or GPU indices", GOOD, flags=["--gpus", "abc"]),
    Case("gpus-twice", "--gpus: GPU listed twice", GOOD, flags=["--gpus", "0,0"]),
    Case("gpus-that-do-not-exist", "--gpus: no GPU 97 here; ", GOOD, flags=["--gpus", "97"]),
    Case("workers-per-gpu-0", "--workers-per-gpu: must be at least 1 (got 0)", GOOD, flags=["--workers-per-gpu", "0"]),
    Case("workers-0", "--workers: must be at least 1 (got 0)", GOOD, flags=["--workers", "0"]),
    Case("backend-nope", "--backend: invalid choice: 'nope'", GOOD, flags=["--backend", "nope"]),
    Case("trainer-nodots", "--trainer: expected package.module:function, got 'nodots'", GOOD, flags=["--trainer", "nodots"]),
    Case("trainer-missing-module", "--trainer: no module named 'no_such_pkg_hpo.mod'", GOOD,
         flags=["--trainer", "no_such_pkg_hpo.mod:train"]),
    Case("builtin-trainer-unknown-setting", "parameters.lrr: hpo's trainer (hpo.train) has no setting 'lrr'",
         sweep("lrr: {values: [0.1]}", top='method: random\ncommand: [python, -m, hpo.train, "${args}"]'),
         validate=True),
    Case("study-bad", "--study: 'a b' must be letters", GOOD, flags=["--study", "a b"]),
    Case("storage-bad-scheme", "--storage: unknown scheme", GOOD, flags=["--storage", "ftp://host/x"]),
]


def setup(case: Case, folder: Path) -> list[str]:
    """Write the case's files into `folder`; return the sweep-file argument(s)."""
    if case.text is not None:
        data = case.text if isinstance(case.text, bytes) else textwrap.dedent(case.text)
        (folder / "sweep.yaml").write_bytes(data if isinstance(data, bytes) else data.encode())
    for name, content in case.files.items():
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return case.args or ["sweep.yaml"]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def check_clean(folder: Path, before: set[str], out: str) -> None:
    assert "Traceback" not in out
    assert not (folder / "PWNED").exists()
    assert tree(folder) == before, f"wrote {sorted(tree(folder) - before)}"
    for name in ("runs", "mlflow.db", "optuna.log", "wandb", "mlruns"):
        assert not (folder / name).exists()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_rejects_with_one_line(case: Case, tmp_path: Path):
    before_args = setup(case, tmp_path)
    before = tree(tmp_path)
    out = run_hpo("run", *before_args, *RUN_FLAGS, *case.flags, cwd=tmp_path, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].strip(), out.stderr
    assert lines[0].startswith(case.prefix), lines[0]
    assert len(lines[0]) < 400, "one clear line, not a dump"
    assert out.stdout == ""
    check_clean(tmp_path, before, out.stdout + out.stderr)


VALIDATE_CASES = [c for c in CASES if c.validate]


@pytest.mark.parametrize("case", VALIDATE_CASES, ids=[c.id for c in VALIDATE_CASES])
def test_validate_rejects_and_lists_problems(case: Case, tmp_path: Path):
    args = setup(case, tmp_path)
    before = tree(tmp_path)
    out = run_hpo("validate", *args, *case.flags, cwd=tmp_path, timeout=60)
    lines = out.stderr.splitlines()
    assert out.returncode == 2, out.stderr
    assert lines and all(line.strip() for line in lines)
    assert lines[0].startswith(case.prefix), lines[0]
    check_clean(tmp_path, before, out.stdout + out.stderr)


def test_validate_lists_every_problem(tmp_path: Path):
    (tmp_path / "sweep.yaml").write_text(sweep(
        "lr: {min: 1.0, max: 0.1}\nn: {distribution: int_uniform, min: 0.5, max: 3}\nx: {values: []}",
        "method: bayes\nrun_cap: 0"))
    out = run_hpo("validate", "sweep.yaml", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "run_cap: 0 is less than the minimum of 1",
        "parameters.lr.min: must be less than max (1.0 >= 0.1)",
        "parameters.n.min: 0.5 is not of type 'integer'",
        "parameters.x.values: [] should be non-empty",
        "metric.name: required with method bayes",
    ]
    check_clean(tmp_path, {"sweep.yaml"}, out.stdout + out.stderr)


def test_good_sweep_validates(tmp_path: Path):
    (tmp_path / "sweep.yaml").write_text(textwrap.dedent(GOOD))
    out = run_hpo("validate", "sweep.yaml", "--workers", "1", cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sweep.yaml: ok (random, 2 parameters")
    check_clean(tmp_path, {"sweep.yaml"}, out.stdout + out.stderr)


def test_run_summary_says_how_many_more_problems(tmp_path: Path):
    (tmp_path / "sweep.yaml").write_text(sweep("lr: {min: 1.0, max: 0.1}\nx: {values: []}"))
    out = run_hpo("run", "sweep.yaml", *RUN_FLAGS, cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("parameters.lr.min: must be less than max (1.0 >= 0.1) "
                                  "(and 1 more problem; `hpo validate` lists them)")


def test_a_device_that_never_ends_is_one_line(tmp_path: Path):
    """/dev/zero reports a size of 0 and never ends: the cap counts the bytes read, not st_size."""
    out = run_hpo("validate", "/dev/zero", cwd=tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "a sweep file must be under" in out.stderr


def test_a_sweep_read_from_a_pipe_is_run_and_stored_whole(tmp_path: Path):
    """`hpo run <(cat sweep.yaml)`: a pipe can be read once, so the sweep is read once, and the parent run's
    sweep.yaml artifact holds the whole text."""
    import os
    import threading

    from conftest import mlflow_client

    text = textwrap.dedent(GOOD).replace("method: random", "name: piped\nmethod: random") \
        .replace("metric: {name: val_loss}", "metric: {name: score, goal: maximize}") \
        .replace("  lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-1}\n", "")
    fifo = tmp_path / "sweep.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as f:
            f.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    tests = str(Path(__file__).parent)
    out = run_hpo("run", str(fifo), *RUN_FLAGS, "--trainer", "fault_trainers:trivial", cwd=tmp_path,
                  env={"PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")}, timeout=300)
    writer.join(timeout=5)
    assert out.returncode == 0, out.stderr
    client = mlflow_client(tmp_path / "runs" / "piped")
    parent = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1
    stored = Path(client.download_artifacts(parent[0].info.run_id, "sweep.yaml", str(tmp_path)))
    assert stored.read_text() == text

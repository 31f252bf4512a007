"""Program mode: a W&B sweep's own `program:`/`command:` runs per trial as `wandb agent` would run it.

The programs are real scripts (tests/programs/): one using wandb (offline) with
wandb.config and wandb.log, one printing `name=value` lines, one reporting through
`hpo.report` that ignores SIGTERM and forks a child, and a shell script. Each writes
what it saw (argv, wandb.config, its pid) under $SEEN_DIR; the tests compare that with
what Optuna and MLflow recorded, read with their own clients.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_optuna_reads, load_study, mlflow_client, run_hpo, write

PROGRAMS = Path(__file__).parent / "programs"
ENGINES = {"optuna": [], "ray": ["--backend", "ray"], "wandb": ["--backend", "wandb", "--offline"]}


def _setup(tmp_path: Path, program: str, sweep: str) -> tuple[Path, dict]:
    shutil.copy(PROGRAMS / program, tmp_path / program)
    seen = tmp_path / "seen"
    seen.mkdir()
    write(tmp_path / "sweep.yaml", sweep)
    env = {"SEEN_DIR": str(seen), "HPO_RAY_NUM_CPUS": "2", "WANDB_SILENT": "true", "HOME": str(tmp_path),
           "WANDB_CONFIG_DIR": str(tmp_path / "wbc"), "WANDB_CACHE_DIR": str(tmp_path / "wbcache")}
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        os.environ.pop(key, None)
    return seen, env


def _children(sweep_dir: Path):
    client = mlflow_client(sweep_dir)
    exp = client.get_experiment_by_name(sweep_dir.name)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids(seen: Path) -> list[int]:
    return [int(p.name[4:]) for p in seen.glob("pid-*")]


WB_SWEEP = """
name: prog
program: wb_train.py
command: ["${env}", "${interpreter}", "${program}", "${args}", "--json=${args_json_file}"]
method: random
metric: {name: val/acc, goal: maximize}
parameters:
  lr: {distribution: q_log_uniform_values, min: 1, max: 64, q: 1}
  epochs: {value: 4}
  flag: {values: [true, false]}
  opt:
    parameters:
      name: {values: [sgd, adam]}
      beta: {distribution: uniform, min: 0.1, max: 0.9}
"""


@pytest.mark.parametrize("engine", list(ENGINES))
def test_wandb_program_gets_its_parameters_and_its_logs_reach_the_sweep_live(tmp_path, engine):
    seen, env = _setup(tmp_path, "wb_train.py", WB_SWEEP)
    out = run_hpo("run", "sweep.yaml", "--trials", "4", "--workers", "2", "--no-progress", *ENGINES[engine],
                  cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    client, children = _children(tmp_path / "runs" / "prog")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}, out.stderr[-2000:]
    for child in children:
        saw = json.loads((seen / f"trial-{child.data.tags['hpo.trial']}.json").read_text())
        config = saw["config"]
        assert saw["mode"] == "offline", "no W&B credentials: the program's wandb runs offline"
        assert config["default_only"] == 7, "the script's own defaults stay beside the sweep's values"
        # wandb.config holds the trial's parameters, nested blocks as nested dicts, as under `wandb agent`
        assert isinstance(config["lr"], int) and 1 <= config["lr"] <= 64
        assert config["opt"]["name"] in ("sgd", "adam") and 0.1 <= config["opt"]["beta"] <= 0.9
        recorded = child.data.params
        assert recorded["lr"] == str(config["lr"]) and recorded["opt.name"] == config["opt"]["name"]
        assert float(recorded["opt.beta"]) == pytest.approx(config["opt"]["beta"])
        assert f"--lr={config['lr']}" in saw["argv"] and f"--flag={config['flag']}" in saw["argv"]
        # every wandb.log reached MLflow at its step; the trial's value is the last one logged
        rate = config["lr"] / 100.0 * (2.0 if config["opt"]["name"] == "adam" else 1.0)
        history = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val/acc"))
        assert [s for s, _ in history] == [1, 2, 3, 4]
        assert [v for _, v in history] == pytest.approx([rate * e for e in (1, 2, 3, 4)])
        assert child.data.metrics["train.loss"] == pytest.approx(1 - rate * 4)
    wandb_runs = list((tmp_path / "runs" / "prog" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 4, "each trial's wandb run is kept offline under runs/NAME/wandb/"
    if engine == "optuna":
        study = load_study(tmp_path / "runs" / "prog", "prog")
        assert study.metric_names == ["val/acc"], "optuna-dashboard names the objective"
        by_number = {t.number: t for t in study.trials}
        for child in children:
            config = json.loads((seen / f"trial-{child.data.tags['hpo.trial']}.json").read_text())["config"]
            trial = by_number[int(child.data.tags["hpo.trial"])]
            assert trial.params["lr"] == config["lr"]
            assert trial.value == pytest.approx(child.data.metrics["val/acc"])


KV_SWEEP = """
name: kv
program: kv_train.py
method: grid
metric: {name: score, goal: maximize}
early_terminate: {type: hyperband, min_iter: 1, eta: 3}
parameters:
  lr: {values: [0.012, 0.011, 0.010, 0.009, 0.008, 0.007]}
  epochs: {value: 9}
"""


def test_name_value_program_is_stopped_by_hyperband_and_nothing_is_left_running(tmp_path):
    seen, env = _setup(tmp_path, "kv_train.py", KV_SWEEP)
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path,
                  env={**env, "EPOCH_S": "0.05"})
    assert out.returncode == 0, out.stderr[-3000:]
    client, children = _children(tmp_path / "runs" / "kv")
    pruned = [c for c in children if c.data.tags["hpo.state"] == "pruned"]
    complete = [c for c in children if c.data.tags["hpo.state"] == "complete"]
    assert len(children) == 6 and pruned and complete
    for child in children:
        lr = float(child.data.params["lr"])
        steps = sorted((m.step, m.value) for m in client.get_metric_history(child.info.run_id, "score"))
        assert [v for _, v in steps] == pytest.approx([lr * s for s, _ in steps], abs=1e-6)
        if child in pruned:
            assert steps[-1][0] < 9 and child.info.status == "FINISHED"
            assert float(child.data.metrics["score"]) == pytest.approx(lr * steps[-1][0], abs=1e-6)
        else:
            assert steps[-1][0] == 9 and child.data.metrics["loss"] == pytest.approx(1 - lr * 9, abs=1e-6)
    assert len(_pids(seen)) == 6
    assert not [p for p in _pids(seen) if _alive(p)], "a stopped program's process lives on"
    log = (tmp_path / "runs" / "kv" / "logs" / f"trial-{complete[0].data.tags['hpo.trial']}.out").read_text()
    assert "epoch 9: score=" in log, "each trial's stdout is kept in runs/NAME/logs/"


REPORT_SWEEP = """
name: rep
program: report_train.py
command: ["${interpreter}", "${program}", "${param.lr}", "${param.epochs}"]
method: random
metric: {name: score, goal: maximize}
parameters:
  lr: {distribution: uniform, min: 0.1, max: 0.2}
  epochs: {value: %d}
"""


def test_forked_children_do_not_outlive_their_trial(tmp_path):
    seen, env = _setup(tmp_path, "report_train.py", REPORT_SWEEP % 3)
    out = run_hpo("run", "sweep.yaml", "--trials", "2", "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    _, children = _children(tmp_path / "runs" / "rep")
    assert len(children) == 2
    for child in children:  # hpo.report's values, at the program's epochs; the last is the value
        assert child.data.metrics["score"] == pytest.approx(float(child.data.params["lr"]) * 3)
    assert sorted(p.read_text() for p in seen.glob("pid-*")) == ["child", "child", "main", "main"]
    assert not [p for p in _pids(seen) if _alive(p)], "the program's forked child outlived its trial"


def test_ctrl_c_stops_a_program_that_ignores_sigterm_and_its_children(tmp_path):
    seen, env = _setup(tmp_path, "report_train.py", REPORT_SWEEP % 200)
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--trials", "2", "--workers", "1",
                             "--no-progress"], cwd=tmp_path, env={**os.environ, **env, "EPOCH_S": "0.2"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_pids(seen)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # a few reports in
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert len(_pids(seen)) == 2 and not [p for p in _pids(seen) if _alive(p)], "SIGKILL after the grace"
    client, children = _children(tmp_path / "runs" / "rep")
    assert [c.info.status for c in children] == ["KILLED"]
    assert client.get_metric_history(children[0].info.run_id, "score"), "reports arrived while it ran"
    study = load_study(tmp_path / "runs" / "rep", "rep")
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


SH_SWEEP = """
name: sh
program: train.sh
command: ["${program}", "${args}"]
method: grid
metric: {name: score, goal: maximize}
parameters:
  lr: {value: 0.5}
  fail: {values: [true, false]}
"""


def test_a_failing_program_fails_its_trial_with_its_stderr_and_the_sweep_goes_on(tmp_path):
    seen, env = _setup(tmp_path, "train.sh", SH_SWEEP)
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    _, children = _children(tmp_path / "runs" / "sh")
    by_state = {c.data.tags["hpo.state"]: c for c in children}
    assert set(by_state) == {"failed", "complete"}
    failed = by_state["failed"]
    assert failed.info.status == "FAILED" and failed.data.params["fail"] == "True"
    assert "exit code 3" in failed.data.tags["hpo.error"]
    assert "sh: asked to fail (lr=--fail=True)" in failed.data.tags["hpo.error"]
    assert by_state["complete"].data.metrics["score"] == pytest.approx(0.3), "the last name=value line"


@pytest.mark.parametrize("sweep, line", [
    ("program: nope.py\n", "program: nope.py not found in "),
    ("", "program: the sweep names nothing to run"),
    ('command: [python, "${program}", "${args}"]\n', "program: the command uses ${program} but the sweep names no"),
])
def test_nothing_to_run_is_one_line_and_writes_nothing(tmp_path, sweep, line):
    write(tmp_path / "sweep.yaml", "method: random\nmetric: {name: a}\nparameters:\n  x: {values: [1, 2]}\n" + sweep)
    out = run_hpo("run", "sweep.yaml", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith(line), out.stderr
    assert not (tmp_path / "runs").exists()
    if not sweep:  # a valid W&B sweep all the same: `hpo validate` accepts it and says what is missing
        out = run_hpo("validate", "sweep.yaml", cwd=tmp_path)
        assert out.returncode == 0 and "but the sweep names nothing to run" in out.stdout, out.stdout
    if "nope.py" in sweep:  # the file may be run elsewhere: `hpo validate` checks it and notes the program
        out = run_hpo("validate", "sweep.yaml", cwd=tmp_path)
        assert out.returncode == 0 and "note: program: nope.py is not in" in out.stdout, out.stdout + out.stderr
        assert not (tmp_path / "runs").exists()


DUMP = """
import json, os, sys, wandb
run = wandb.init()
with open(os.path.join(os.environ["SEEN_DIR"], "trial.json"), "w") as f:
    json.dump({"config": dict(wandb.config), "argv": sys.argv[1:]}, f)
wandb.log({"score": 1.0})
run.finish()
"""

NAMES_SWEEP = """
name: names
program: dump.py
method: random
metric: {name: score, goal: maximize}
parameters:
  optimizer: {values: [adam]}
  optimizer.config.learning_rate: {values: [0.1]}
  a.b.activations.0: {value: relu}
  model:
    parameters:
      depth: {value: 2}
"""


def test_literal_dotted_and_numeric_names_reach_the_program_as_wandb_gives_them(tmp_path):
    """W&B keeps `optimizer.config.learning_rate` a key of its own beside `optimizer`; blocks nest."""
    seen, env = _setup(tmp_path, "wb_train.py", NAMES_SWEEP)
    (tmp_path / "dump.py").write_text(DUMP)
    out = run_hpo("run", "sweep.yaml", "--trials", "1", "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    saw = json.loads((seen / "trial.json").read_text())
    assert saw["config"] == {"optimizer": "adam", "optimizer.config.learning_rate": 0.1,
                             "a.b.activations.0": "relu", "model": {"depth": 2}}
    assert sorted(saw["argv"]) == sorted(["--optimizer=adam", "--optimizer.config.learning_rate=0.1",
                                          "--a.b.activations.0=relu", "--model={'depth': 2}"])


@pytest.mark.parametrize("engine", ["optuna", "ray", "wandb"])
def test_a_sweep_without_a_metric_records_every_trial_and_names_no_best(tmp_path, engine):
    """W&B lets random and grid sweeps go without `metric:`; the trials are still the record. Each COMPLETE
    trial's value is its run time (`_runtime`, as W&B names it), so Optuna's own tools and optuna-dashboard
    read the study; hpo itself names no best."""
    seen, env = _setup(tmp_path, "wb_train.py", "name: nometric\nprogram: dump.py\nmethod: grid\n"
                                                 "parameters:\n  a: {values: [1, 2, 3]}\n")
    (tmp_path / "dump.py").write_text(DUMP.replace('"trial.json"', 'f"trial-{wandb.config.a}.json"'))
    out = run_hpo("run", "sweep.yaml", "--workers", "2", "--no-progress", *ENGINES[engine], cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1])["best_value"] is None
    assert "best " not in out.stderr
    assert sorted(p.name for p in seen.iterdir()) == ["trial-1.json", "trial-2.json", "trial-3.json"]
    study = load_study(tmp_path / "runs" / "nometric", "nometric")
    assert sorted((t.state.name, t.params["a"]) for t in study.trials) == [
        ("COMPLETE", 1), ("COMPLETE", 2), ("COMPLETE", 3)]
    assert study.metric_names == ["_runtime"]
    for t in study.trials:  # its run time: more than the program's own start-up, less than the sweep
        assert 0 < t.value < (t.datetime_complete - t.datetime_start).total_seconds() + 1, t
    assert_optuna_reads(study)
    _, children = _children(tmp_path / "runs" / "nometric")
    assert sorted((c.info.status, c.data.metrics["score"]) for c in children) == [("FINISHED", 1.0)] * 3
    best = run_hpo("best", "sweep.yaml", cwd=tmp_path)
    assert best.returncode == 0 and json.loads(best.stdout)["best_trial"] is None
    assert "has no metric" in best.stderr
    status = run_hpo("status", "sweep.yaml", cwd=tmp_path)
    assert status.returncode == 0 and "3 complete" in status.stdout and "best:" not in status.stdout


def test_a_program_does_not_outlive_its_worker_killed_by_sigkill(tmp_path):
    """The worker cannot stop its program when SIGKILLed: the kernel sends the program SIGTERM (PDEATHSIG).

    The program writes nothing after it starts, so no broken pipe would end it instead.
    """
    seen, env = _setup(tmp_path, "kv_train.py", """
name: orphan
command: ["/bin/sh", "-c", "echo $$ > $SEEN_DIR/pid-$$; exec sleep ${param.t}"]
method: random
metric: {name: score, goal: maximize}
parameters:
  t: {value: 600}
""")
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "sweep.yaml", "--trials", "1", "--workers", "1",
                             "--no-progress"], cwd=tmp_path, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not _pids(seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        first = _pids(seen)[0]
        worker = int(Path(f"/proc/{first}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _alive(first) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(first), "the program lived on after its worker was killed"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert not [p for p in _pids(seen) if _alive(p)]


def test_hyperband_counts_metric_reports_not_wandb_history_rows(tmp_path):
    """Loss every batch, val/acc every epoch: the metric's k-th report is step k, as W&B's hyperband counts."""
    seen, env = _setup(tmp_path, "wb_batches.py", KV_SWEEP.replace("kv_train.py", "wb_batches.py").replace(
        "name: kv", "name: batches").replace("score", "val/acc").replace("  epochs: {value: 9}\n", ""))
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    client, children = _children(tmp_path / "runs" / "batches")
    pruned = [c for c in children if c.data.tags["hpo.state"] == "pruned"]
    assert len(children) == 6 and pruned, "Hyperband stopped nothing: it saw history rows, not epochs"
    last = {}
    for child in children:
        steps = [m.step for m in sorted(client.get_metric_history(child.info.run_id, "val/acc"), key=lambda m: m.step)]
        assert steps == list(range(1, len(steps) + 1)) and steps[-1] <= 9
        last[child.info.run_id] = steps[-1]
    assert [c for c in pruned if last[c.info.run_id] < 9], "no trial was stopped before its last epoch"
    assert not [p for p in _pids(seen) if _alive(p)]


def test_a_grandchild_without_the_pipe_cannot_write_reports_into_another_file(tmp_path):
    """HPO_REPORT_FD reaches grandchildren, the fd may not (close_fds); its number may be another file there."""
    seen, env = _setup(tmp_path, "kv_train.py", SH_SWEEP)
    (tmp_path / "train.sh").write_text(
        "#!/bin/sh\n"
        "python3 -c \"import os, subprocess, sys; subprocess.run([sys.executable, '-c', '''\n"
        "import os, hpo\n"
        "fd = int(os.environ['HPO_REPORT_FD'].split(':')[0])\n"
        "f = os.open('data.txt', os.O_WRONLY | os.O_CREAT)\n"
        "if f != fd: os.dup2(f, fd)\n"
        "hpo.report(1, score=5.0)\n"
        "'''], close_fds=True)\"\n"
        "echo score=0.25\n")
    (tmp_path / "train.sh").chmod(0o755)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path, env={**env, "PATH": path})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "data.txt").read_bytes() == b"", "a report went into an unrelated file"
    _, children = _children(tmp_path / "runs" / "sh")
    assert [c.data.metrics["score"] for c in children] == [0.25, 0.25]


def test_a_stopped_program_gets_sigint_first_then_sigterm_then_sigkill(tmp_path):
    """As Ctrl-C at a terminal: SIGINT lets wandb and other tools finish their own records (a SIGTERMed wandb
    run leaves an offline file with no history); SIGTERM follows, then SIGKILL, the grace split between them."""
    import signal
    import subprocess

    from hpo.program import stop

    marks = tmp_path / "signals.txt"
    script = (
        "import signal, sys, time\n"
        "def note(name):\n"
        "    def handler(signum, frame):\n"
        "        open(sys.argv[1], 'a').write(name + '\\n')\n"
        "    return handler\n"
        "signal.signal(signal.SIGINT, note('INT'))\n"
        "signal.signal(signal.SIGTERM, note('TERM'))\n"
        "open(sys.argv[1], 'a').write('ready\\n')\n"
        "while True:\n"
        "    time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(marks)], start_new_session=True)
    deadline = time.monotonic() + 30
    while not (marks.exists() and "ready" in marks.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop(proc, grace=1.0)
    assert marks.read_text().split() == ["ready", "INT", "TERM"]
    assert proc.returncode == -signal.SIGKILL, "it ignored both, so it was killed"


def test_a_sweep_file_in_a_subfolder_runs_the_program_where_wandb_agent_would(tmp_path):
    """`hpo run scripts/exp/sweep.yaml` from the repository root, `program: sweep_prog.py` at the root: wandb agent
    starts the program in its own working directory, and so does hpo (it was refused as not found)."""
    (tmp_path / "sweep_prog.py").write_text(
        "import argparse\n"
        "p = argparse.ArgumentParser(); p.add_argument('--x', type=float)\n"
        "a = p.parse_args()\n"
        "print(f'score={a.x}')\n")
    sub = tmp_path / "scripts" / "exp"
    sub.mkdir(parents=True)
    write(sub / "sweep.yaml", """
        name: subfolder
        program: sweep_prog.py
        method: grid
        metric: {name: score, goal: maximize}
        parameters:
          x: {values: [1.0, 2.0]}
    """)
    out = run_hpo("run", "scripts/exp/sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    study = load_study(tmp_path / "runs" / "subfolder", "subfolder")
    assert sorted(t.value for t in study.get_trials()) == [1.0, 2.0]


def test_a_secret_passed_as_an_envvar_argument_reaches_the_program_and_nothing_hpo_writes(tmp_path):
    """`--token=${envvar:MY_API_TOKEN}` (W&B's macro): the program gets the value, as under `wandb agent`;
    a trial that fails quoting its argv (argparse) keeps its error with the value masked, and no file under
    runs/, no stdout or stderr line holds it."""
    seen, env = _setup(tmp_path, "kv_train.py", """
name: envsecret
program: kv_train.py
method: grid
metric: {name: score, goal: maximize}
command: ["${env}", "${interpreter}", "${program}", "--token=${envvar:MY_API_TOKEN}", "${args}"]
parameters:
  lr: {values: [0.1, 0.2]}
  epochs: {value: 2}
""")
    secret = "PLANTED-envvar-token-51"
    program = (tmp_path / "kv_train.py").read_text().replace(
        'p.add_argument("--epochs", type=int)',
        'p.add_argument("--epochs", type=int)\np.add_argument("--token")')
    program = program.replace("a = p.parse_args()", "a = p.parse_args()\n"
                              "open(os.path.join(os.environ['SEEN_DIR'], 'token'), 'w').write(a.token)\n"
                              "if a.lr > 0.15:\n    p.error(f'lr too high for --token={a.token}')")
    (tmp_path / "kv_train.py").write_text(program)
    out = run_hpo("run", "sweep.yaml", "--workers", "1", "--no-progress", cwd=tmp_path,
                  env={**env, "MY_API_TOKEN": secret})
    assert out.returncode == 0, out.stderr[-3000:]
    assert (seen / "token").read_text() == secret, "the program got the value"
    study = load_study(tmp_path / "runs" / "envsecret", "envsecret")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "lr too high for --token=***" in failed[0].user_attrs["hpo.error"], failed
    assert secret not in out.stdout + out.stderr
    leaks = [str(p) for p in (tmp_path / "runs").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaks, leaks

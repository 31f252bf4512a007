"""At scale (issue 27): a 10k / 100k-trial study on PostgreSQL with >= 256 trials running, counted.

    python bench/bench_scale.py [--trials 10000 100000] [--label before|after] [--smoke] [--out PATH]
                                [--code SNAPSHOT_DIR] [--py-spy PATH_TO_PY_SPY]

On the 2-core VM the pre-fill runs at ~33 trials/s (Optuna's `create_new_trial`: ~40 round trips per trial, the
study row locked, so not parallel): 10k in 5 min, 30k in 15 min, 100k in ~50 min; RESULTS.md used 10000 30000.

For each N in --trials, on a private PostgreSQL 15 (tests/servers.py) with pg_stat_statements and auto_explain:

1. **A study hpo made.** A real `hpo run` of 4 trials (2 with --smoke) (method random, `x` uniform, `epochs` 2, `fault_trainers:slow`)
   makes the study and its MLflow parent; its first COMPLETE trial is the template for the rest: the same params
   and distributions (three: `x` and the constants `epochs`, `sleep`, as hpo records them), the same user and
   system attributes (worker, host, pid, MLflow run id, trainer seconds, `hpo.queued`, `fixed_params`), one
   intermediate value per epoch. Pre-fill: `RDBStorage.create_new_trial(study_id, template_trial=...)` (Optuna's
   own API, one transaction per trial) up to N trials, 90 % COMPLETE, 7 % PRUNED (one epoch, `stopped at step 1`),
   3 % FAIL (a trainer error: counted in the budget, not re-run), fresh params, values, run ids and times.
2. **People's reads at N**: `hpo status`, `hpo best` (median of 3) and `hpo report` (median of 3, once when the
   first takes over 60 s), wall time of the command, on PostgreSQL; `hpo status` / `hpo best` also on a journal
   file of N trials (the journal phase's real trials, their records copied with new trial ids up to N).
3. **A live sweep on top**: `hpo run` of the same sweep, `--trials N + M`, 2 local workers (`fault_trainers:slow`,
   2 epochs of --sleep s, no torch), `--no-report --keep-models 0`, MLflow on SQLite; plus --sim simulated workers:
   threads of this process that do what `hpo worker` does to the study, through hpo's own functions
   (`control.wait_while_paused`, `storage.claim`, `storage.Heartbeat` around the trial, the 4 user attributes,
   `distributions.suggest`, the MLflow run id, `worker._prune` per epoch, `hpo.trainer_seconds`,
   `mirror.finish_trial(live=trial)`) on a study loaded as `worker.load_study` loads it; only MLflow is left out.
   Each holds its trial RUNNING for about --hold s (0.7-1.3 x), with heartbeats every `grace / 6` s as a real
   worker's (Optuna's RDB heartbeat, which is how the controller judges a worker on another machine; they set
   `hpo.host` / `hpo.pid` to this live process, so they are never local orphans). The simulated workers start
   --stagger s apart once the controller has queued the budget (as `hpo run` queues it before its workers start);
   `storage.claim` raising for a trial taken and finished meanwhile (where `hpo worker` would exit) is counted as a
   claim race and the simulated worker claims again.
4. **Counted while >= --target trials run** (the simulated workers' own count, plus the 2 real workers), once the
   controller polls (its MLflow set-up done) and each real worker has finished a live trial:
   - window A (--window-a s): `pg_stat_statements` by role and `pg_stat_database` deltas, the controller's CPU;
   - window B (--window-b s): auto_explain (ANALYZE, no timing) logs every plan of the controller's role: rows read.
   **Whose reads are whose**: the controller connects as its own PostgreSQL role, `ctl` (this script starts it
   as `python bench/bench_scale.py _controller run ...`, which is `hpo run` with a SQLAlchemy `do_connect` hook that
   swaps the login role; nothing else changes, and the workers it starts are plain `python -m hpo worker` with the
   sweep's URL, role `hpo`); the simulated workers are role `sim`; this script's own queries role `bench`.
   pg_stat_statements keys its counters by role: `rows` (rows returned to the client), `calls`, COMMIT/ROLLBACK
   calls (transactions), heartbeat writes (INSERT / UPDATE of `trial_heartbeats`). A poll of the controller is one
   read of the study through `hpo.rdb_reads.IncrementalCache`, made once per poll by `Session.top_up`: counted by
   its states query (`POLL_QUERY`; the same way in window B's plans). Before a4f333c+1 it was the stale-trial
   query's `SELECT now()`, then asked every poll; until 2026-12-06 (after_byid) any `_get_trials` counted too. **Rows read** (what the server
   scans, which rows returned do not show: a query that scans the study for 256 RUNNING rows returns 256 and reads
   all N): auto_explain's plans of role `ctl`, summed over heap scan nodes (Seq Scan, Index Scan, Index Only Scan,
   Bitmap Heap Scan): (actual rows + rows removed by filter / index recheck) x loops, the rows PostgreSQL's
   `tup_returned` + `tup_fetched` count for those scans. auto_explain runs only in window B (its instrumentation
   slows the statements a little), so polls/s, CPU and rows returned come from window A. `pg_stat_database`'s
   counters are per database, every role: overall transactions and rows read per second. Backends flush them about
   once a second (an idle one after up to 10 s), so the windows are tens of seconds long.
   - the controller's CPU: psutil user + system of the controller process (not its workers) over window A;
   - trials/s of the live sweep in the windows, and the real workers' cycle (time between successive trial ends
     of one worker, median) and trials/s: the figure whose growth with N shows a per-trial cost that grows with
     the study (the first and last 1,000 of a live 100k study cannot be run here);
   - a real worker's PostgreSQL transactions per trial (role `hpo` in window A over the real trials that ended
     in it; the heartbeat at each trial's start included) and heartbeats per worker-minute (real and simulated).
5. **Bytes written** (a separate phase, first, before PostgreSQL starts): a real `hpo run` of --journal-trials
   trivial trials (`trivial:train`, 2 workers, the default journal `runs/NAME/optuna.log` and MLflow SQLite, as
   bench_speed.py's scale row) in a temporary folder. Written: the `write_bytes` - `cancelled_write_bytes` of
   /proc/self/io of this process across the run (Linux adds a reaped child's I/O to its parent's, so this is the
   controller's and its workers' own, whole), and the disk's sectors written (/sys/block, the whole machine, as
   bench_speed.py counts them); divided by the final size of everything under runs/ (each file once: report.html
   and its artifact copy are one file, a hard link; bench_speed.py counts it twice). At 10,000 trials no
   extrapolation is needed (about 3 minutes on 2 cores); a smaller --journal-trials gives its own ratio, which
   grows with the study (bench_speed.py: 26x at 300 trials, 56x at 10,000), so it is not scaled up.

Writes bench/results/scale_<label>.json (raw numbers, machine, commit) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROLLER_ROLE_ENV = "HPO_BENCH_SCALE_ROLE"  # "role:password" for the `_controller` shim

SWEEP = """\
name: {name}
method: random
metric: {{name: score, goal: maximize}}
parameters:
  x: {{distribution: uniform, min: 0.0, max: 1.0}}
  epochs: {{value: 2}}
  sleep: {{value: {sleep}}}
"""
JOURNAL_SWEEP = """\
name: {name}
method: random
metric: {{name: score, goal: maximize}}
parameters:
  x: {{distribution: uniform, min: 0.0, max: 1.0}}
"""
NAME = "scale"
ROLES = ("ctl", "sim", "bench")
PG_KEYS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated",
           "tup_deleted", "blks_hit", "blks_read")
SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Tid Scan", "Tid Range Scan")


# -- the controller, as its own PostgreSQL role ------------------------------------------------------------
def controller_shim(argv: list[str]) -> None:
    """`hpo run ARGV` in this process, every PostgreSQL connection it opens logged in as $HPO_BENCH_SCALE_ROLE.
    The workers it starts are plain `python -m hpo worker` processes: they keep the sweep's URL and role."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    role, password = os.environ.pop(CONTROLLER_ROLE_ENV).split(":", 1)

    @event.listens_for(Engine, "do_connect")
    def _as_role(dialect, conn_rec, cargs, cparams):  # noqa: ARG001
        if dialect.name == "postgresql":
            cparams.update(user=role, password=password, application_name="hpo-controller")

    from hpo.cli import entry

    sys.argv = ["hpo", *argv]
    entry()


# -- PostgreSQL ----------------------------------------------------------------------------------------------
class Pg:
    """The private server (tests/servers.py), its roles and the extensions this benchmark reads."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import servers

        self.server = servers.start_postgres()
        try:
            self._setup()
        except BaseException:
            self.server.shutdown()
            raise

    def _setup(self) -> None:
        import psycopg

        head, _, _ = self.server.url.rpartition("/")
        self.password = head.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
        self.host = head.split("@", 1)[1]
        with psycopg.connect(self.server.url, autocommit=True) as con:
            for role in ROLES:
                con.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{self.password}'")
            con.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', 'auto_explain'")
            for key, value in (("max_connections", "400"), ("shared_buffers", "512MB"), ("log_line_prefix", "%n %u ")):
                con.execute(f"ALTER SYSTEM SET {key} = '{value}'")
            data = Path(con.execute("SHOW data_directory").fetchone()[0])
        # ALTER SYSTEM refuses a library's setting before the library is loaded; the file takes it.
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("pg_stat_statements.max = 20000\n")  # IN lists of every length are distinct statements
        self.server.stop()  # preloaded libraries need a restart
        self.server.start()
        with psycopg.connect(self.server.url, autocommit=True) as con:
            for key, value in (("auto_explain.log_min_duration", "-1"), ("auto_explain.log_analyze", "on"),
                               ("auto_explain.log_timing", "off"), ("auto_explain.log_format", "json")):
                con.execute(f"ALTER SYSTEM SET {key} = '{value}'")
            con.execute("SELECT pg_reload_conf()")
            # Every role but the controller's keeps auto_explain off, whatever the system setting says.
            for role in ("hpo", "sim", "bench"):
                con.execute(f"ALTER ROLE {role} SET auto_explain.log_min_duration = -1")
            con.execute("CREATE EXTENSION pg_stat_statements")  # its view, read from here for every database
        self.log = data.parent / "log"  # pg_ctl -l (servers.start_postgres)
        self.admin = psycopg.connect(self.url("bench", "postgres", driver=""), autocommit=True)

    def url(self, role: str, db: str, driver: str = "+psycopg") -> str:
        return f"postgresql{driver}://{role}:{self.password}@{self.host}/{db}"

    def create_database(self, db: str) -> None:
        import psycopg

        self.admin.execute(f"DROP DATABASE IF EXISTS {db}")
        self.admin.execute(f"CREATE DATABASE {db}")
        with psycopg.connect(self.url("bench", db, driver=""), autocommit=True) as con:
            con.execute("CREATE EXTENSION pg_stat_statements")

    def explain(self, on: bool) -> None:
        self.admin.execute(f"ALTER SYSTEM SET auto_explain.log_min_duration = {0 if on else -1}")
        self.admin.execute("SELECT pg_reload_conf()")

    def database_stats(self, db: str) -> dict[str, int]:
        self.admin.execute("SELECT pg_stat_clear_snapshot()")
        row = self.admin.execute(f"SELECT {', '.join(PG_KEYS)} FROM pg_stat_database WHERE datname = %s",
                                 (db,)).fetchone()
        return dict(zip(PG_KEYS, map(int, row)))

    def statements(self, db: str) -> dict[tuple[str, int], dict]:
        rows = self.admin.execute(
            "SELECT r.rolname, s.queryid, s.query, s.calls, s.rows, s.shared_blks_hit + s.shared_blks_read "
            "FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s", (db,)).fetchall()
        return {(r[0], r[1]): {"query": r[2], "calls": r[3], "rows": r[4], "blocks": r[5]} for r in rows}

    def analyze(self, db: str) -> None:
        """The planner's statistics brought up to the pre-filled tables, as autovacuum keeps a live study's (a bulk
        load can outrun it: with statistics from when the tables were small, PostgreSQL scans a child table whole
        for an `IN` list of 20 trials at 10,000 trials; measured after ANALYZE, it reads only their rows)."""
        import psycopg

        with psycopg.connect(self.url("bench", db, driver=""), autocommit=True) as con:
            con.execute("ANALYZE")

    def counts(self, db: str) -> dict[str, int]:
        """Trials by state (this script's role: not counted as anyone else's)."""
        import psycopg

        with psycopg.connect(self.url("bench", db, driver=""), autocommit=True) as con:
            rows = con.execute("SELECT state, count(*) FROM trials GROUP BY state").fetchall()
        return {str(state).lower(): n for state, n in rows}

    def real_done(self, db: str, first: int) -> int:
        """Trials numbered `first` or later that a real worker (not a simulated one) completed."""
        import psycopg

        with psycopg.connect(self.url("bench", db, driver=""), autocommit=True) as con:
            return con.execute(
                "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "AND a.key = 'hpo.worker' WHERE t.number >= %s AND t.state = 'COMPLETE' "
                "AND a.value_json NOT LIKE '\"sim-%%'", (first,)).fetchone()[0]

    def shutdown(self) -> None:
        try:
            self.admin.close()
        finally:
            self.server.shutdown()


# A poll is one read of the study through hpo.rdb_reads.IncrementalCache (`Session.top_up`, once per poll): its
# states query (`SELECT trials.trial_id, trials.state FROM unnest(...) JOIN trials ...`), one statement a
# poll, then Optuna's `_get_trials` of the changed trials when there are any. Until 2026-12-06 (after_byid) this
# matched Optuna's `_get_trials` too, so a poll with changed trials counted twice and the rows read per
# poll were under-stated up to 2x (after_reads2: 5,003 "per poll" was ~9,600 per states query). A whole read
# (`read_all_next`: a worker gone, orphans) makes no states query: its rows count, not as a poll.
POLL_QUERY = re.compile(r"^SELECT trials\.trial_id, trials\.state FROM (unnest\(|trials WHERE trials\.study_id = )")


def by_role(before: dict, after: dict) -> dict[str, dict]:
    """pg_stat_statements deltas summed per role: calls, rows returned, blocks, transactions, heartbeats, polls."""
    out: dict[str, dict] = {}
    for key, now in after.items():
        was = before.get(key, {"calls": 0, "rows": 0, "blocks": 0})
        calls, rows, blocks = now["calls"] - was["calls"], now["rows"] - was["rows"], now["blocks"] - was["blocks"]
        if calls <= 0:
            continue
        r = out.setdefault(key[0], {"calls": 0, "rows": 0, "blocks": 0, "xacts": 0, "heartbeats": 0, "now_calls": 0,
                                    "polls": 0,
                                    "top": {}})
        q = " ".join(now["query"].split())
        r["calls"] += calls
        r["rows"] += rows
        r["blocks"] += blocks
        if q.upper() in ("COMMIT", "ROLLBACK"):
            r["xacts"] += calls
        if re.match(r"(INSERT INTO|UPDATE) trial_heartbeats\b", q):
            r["heartbeats"] += calls
        if re.match(r"SELECT now\(\)", q):
            r["now_calls"] += calls
        if q.startswith("SELECT") and POLL_QUERY.search(q):
            r["polls"] += calls
        short = re.sub(r"\$\d+(, \$\d+)*", "$…", q)[:160]
        top = r["top"].setdefault(short, {"calls": 0, "rows": 0})
        top["calls"] += calls
        top["rows"] += rows
    for r in out.values():
        r["top"] = dict(sorted(r["top"].items(), key=lambda kv: -kv[1]["rows"])[:12])
    return out


def rows_read(plan: dict) -> float:
    """Heap rows a plan read: (actual rows + rows removed by filter / recheck) x loops over its scan nodes."""
    total = 0.0
    if plan.get("Node Type") in SCANS:
        per_loop = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0) + plan.get(
            "Rows Removed by Index Recheck", 0)
        total += per_loop * plan.get("Actual Loops", 1)
    for child in plan.get("Plans", ()):
        total += rows_read(child)
    return total


def explained(log: Path, offset: int, role: str, t0: float, t1: float) -> dict:
    """auto_explain's plans of `role` logged between t0 and t1 (from byte `offset` of the server log)."""
    head = re.compile(r"^(\d+\.\d+) (\S*) LOG:  duration: [\d.]+ ms  plan:\s*$")
    prefix = re.compile(r"^\d+\.\d+ \S* ")
    plans, current, stamp_role = [], None, None
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    for line in text.splitlines():
        m = head.match(line)
        if m or prefix.match(line):
            if current is not None:
                plans.append((stamp_role, "\n".join(current)))
            current, stamp_role = ([], (float(m[1]), m[2])) if m else (None, None)
            continue
        if current is not None:
            current.append(line)
    if current is not None:
        plans.append((stamp_role, "\n".join(current)))
    total, n, stale, by_query, stale_text = 0.0, 0, 0, {}, ""
    for (stamp, who), body in plans:
        if who != role or not t0 <= stamp <= t1:
            continue
        try:
            doc = json.loads(body)
        except ValueError:
            continue
        query = " ".join(doc.get("Query Text", "").split())
        rows = rows_read(doc["Plan"])
        total += rows
        n += 1
        if query.startswith("SELECT") and POLL_QUERY.search(query):
            stale += 1
            stale_text = query[:400]
        short = re.sub(r"\$\d+(, \$\d+)*", "$…", query)[:160]
        q = by_query.setdefault(short, {"calls": 0, "rows_read": 0})
        q["calls"] += 1
        q["rows_read"] += rows
    top = dict(sorted(by_query.items(), key=lambda kv: -kv[1]["rows_read"])[:12])
    return {"statements": n, "rows_read": total, "stale_queries": stale, "stale_query": stale_text, "top": top}


# -- commands --------------------------------------------------------------------------------------------
def env(code: str | None = None) -> dict[str, str]:
    paths = [str(ROOT / "tests"), str(ROOT / "bench")] + ([code] if code else [])
    out = {**os.environ, "PYTHONPATH": os.pathsep.join(([code] if code else []) + paths),
           "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def hpo(cwd: Path, args: list[str], code: str | None, timeout: float = 1800) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env(code), capture_output=True, text=True,
                         timeout=timeout)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"hpo {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return took, out.stdout


def latency(cwd: Path, args: list[str], reps: int, code: str | None, slow_after: float = 60.0) -> dict:
    times = []
    for _ in range(reps):
        took, _ = hpo(cwd, args, code)
        times.append(round(took, 3))
        if took > slow_after:
            break
    return {"median_s": round(statistics.median(times), 3), "runs_s": times}


# -- pre-fill ----------------------------------------------------------------------------------------------
def template_of(study) -> "FrozenTrial":  # noqa: F821
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise SystemExit("the first hpo run left no COMPLETE trial to copy")
    return done[0]


def made_like(tpl, i: int, rng: random.Random, t0: datetime):
    """Trial i of the pre-fill: the template's shape, its own params, values, run id, times and state."""
    from optuna.trial import FrozenTrial, TrialState

    from hpo import keys

    x = rng.random()
    epochs = max(tpl.intermediate_values) if tpl.intermediate_values else 2
    u = rng.random()
    state = TrialState.COMPLETE if u < 0.90 else TrialState.PRUNED if u < 0.97 else TrialState.FAIL
    params = dict(tpl.params)
    params["x"] = x
    user = dict(tpl.user_attrs)
    user.update({keys.MLFLOW_RUN_ID: uuid.uuid4().hex, keys.PID: rng.randint(1000, 99999),
                 keys.WORKER: f"cpu{i % 2}", keys.TRAINER_SECONDS: round(rng.uniform(0.5, 1.5), 4)})
    for k in (keys.REASON, keys.ERROR, keys.ERROR_TYPE):
        user.pop(k, None)
    steps = range(1, epochs + 1) if state == TrialState.COMPLETE else range(1, 2)
    inter = {s: s * x for s in steps}
    value = None
    if state == TrialState.COMPLETE:
        value = epochs * x
    elif state == TrialState.PRUNED:
        value = x  # Optuna's tell records a pruned trial's last intermediate value
        user[keys.REASON] = "stopped at step 1"
    else:
        user.update({keys.REASON: "error", keys.ERROR_TYPE: "ValueError", keys.ERROR: "boom: a simulated trainer error"})
    start = t0 + timedelta(seconds=0.3 * i)
    return FrozenTrial(number=0, state=state, value=None, values=None if value is None else [value],
                       datetime_start=start, datetime_complete=start + timedelta(seconds=user[keys.TRAINER_SECONDS] + 0.05),
                       params=params, distributions=dict(tpl.distributions), user_attrs=user,
                       system_attrs=dict(tpl.system_attrs), intermediate_values=inter, trial_id=0)


def copy_prefill(url: str, n: int) -> dict:
    """`--copy-from K`: trials K..n-1 as copies of trials 0..K-1 (number % K) with all their rows (params, values,
    user and system attributes, intermediate values), by SQL on the server: seconds for 100,000 trials where
    Optuna's `create_new_trial` takes ~50 minutes. Rows a read of the study sees as it sees Optuna's; only their
    values repeat every K trials."""
    import psycopg

    start = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as con:
        sid, have = con.execute("SELECT study_id, count(*) FROM trials GROUP BY study_id").fetchone()
        if have >= n:
            return {"copied": 0, "seconds": 0.0}
        con.execute("INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
                    "SELECT g, %s, s.state, s.datetime_start, s.datetime_complete FROM generate_series(%s::int, %s::int) g "
                    "JOIN trials s ON s.study_id = %s AND s.number = g %% %s ORDER BY g", (sid, have, n - 1, sid, have))
        for table, cols in (("trial_params", "param_name, param_value, distribution_json"),
                            ("trial_values", "objective, value, value_type"),
                            ("trial_user_attributes", "key, value_json"),
                            ("trial_system_attributes", "key, value_json"),
                            ("trial_intermediate_values", "step, intermediate_value, intermediate_value_type")):
            picked = ", ".join(f"c.{c.strip()}" for c in cols.split(","))
            con.execute(f"INSERT INTO {table} (trial_id, {cols}) SELECT t.trial_id, {picked} FROM trials t "
                        f"JOIN trials s ON s.study_id = t.study_id AND s.number = t.number %% %s "
                        f"JOIN {table} c ON c.trial_id = s.trial_id WHERE t.study_id = %s AND t.number >= %s",
                        (have, sid, have))
    return {"copied": n - have, "seconds": round(time.perf_counter() - start, 1)}


def prefill(url: str, n: int, seed: int) -> dict:
    """Up to n trials, one `create_new_trial` (one transaction) each; commits not waited for (prefill only)."""
    import optuna

    store = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"options": "-c synchronous_commit=off"}})
    study = optuna.load_study(study_name=NAME, storage=store)
    tpl = template_of(study)
    have = len(study.get_trials(deepcopy=False))
    rng, t0 = random.Random(seed), datetime.now() - timedelta(seconds=0.3 * n + 3600)
    start, last = time.perf_counter(), time.perf_counter()
    for i in range(have, n):
        store.create_new_trial(study._study_id, template_trial=made_like(tpl, i, rng, t0))  # noqa: SLF001
        if time.perf_counter() - last > 60:
            last = time.perf_counter()
            done = i + 1 - have
            print(f"  pre-fill: {i + 1}/{n} ({done / (last - start):.0f} trials/s)", file=sys.stderr, flush=True)
    took = time.perf_counter() - start
    store.engine.dispose()
    added = n - have
    return {"trials": n, "added": added, "seconds": round(took, 1), "trials_per_s": round(added / took, 1) if took else 0}


# -- simulated workers -----------------------------------------------------------------------------------
class Sim:
    """`hpo worker`'s traffic to the study, from threads of this process (MLflow left out)."""

    def __init__(self, url: str, threads: int, hold: float, stagger: float):
        import optuna

        from hpo import keys, storage
        from hpo import distributions as space
        from hpo import spec as specmod
        from hpo.spec import hyperband
        from hpo.storage_outage import PatientRDBStorage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # As storage.open_storage, with a connection pool for every thread (a real worker has its own process).
        store = PatientRDBStorage(url, engine_kwargs={"pool_pre_ping": True, "pool_size": 40, "max_overflow": 160,
                                                      "pool_timeout": 600},
                                  heartbeat_interval=storage.heartbeat_interval_s(),
                                  grace_period=storage.heartbeat_grace())
        store.hpo_label = "--storage (simulated workers)"
        attrs = optuna.load_study(study_name=NAME, storage=store).user_attrs  # as worker.load_study
        spec = specmod.from_dict(json.loads(attrs[keys.SPEC]))
        self.study = optuna.load_study(study_name=NAME, storage=store, sampler=space.sampler(spec),
                                       pruner=space.pruner(spec, attrs.get(keys.OPTUNA_PRUNER, "hyperband")))
        started = time.perf_counter()
        self.study.get_trials(deepcopy=False)  # what a joining worker's first prune or TPE sample reads (Optuna's)
        self.first_read_s = round(time.perf_counter() - started, 2)
        self.dists = space.distributions(spec)
        self.last_step = hyperband.last_step(spec) if spec.hyperband is not None else None
        self.epochs = int(spec.raw["parameters"]["epochs"]["value"])
        self.threads, self.hold, self.stagger = threads, hold, stagger
        self.held = self.done = 0
        # `storage.claim` raises (where a real worker would exit) when a trial of the WAITING list it read is taken
        # and finished by another worker before its turn comes: counted, and the simulated worker claims again.
        self.claim_races = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.pool: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._serve, args=(i,), daemon=True, name=f"sim-{i}")
            t.start()
            self.pool.append(t)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self.pool:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.pool)

    def _serve(self, i: int) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        from hpo import control, storage

        time.sleep(i * self.stagger)
        rng = random.Random(i)
        while control.wait_while_paused(self.study):
            try:
                trial = storage.claim(self.study)
            except UpdateFinishedTrialError:  # a queued trial claimed *and finished* meanwhile: see claim_races
                with self.lock:
                    self.claim_races += 1
                continue
            if trial is None:
                break
            with self.lock:
                self.held += 1
            try:
                with storage.Heartbeat(self.study, trial._trial_id):  # noqa: SLF001
                    self._run(trial, f"sim-{i}", rng)
            except Exception as exc:  # noqa: BLE001 - as serve(): never leave the trial RUNNING
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                try:
                    storage.fail_trial(self.study, trial._trial_id, "worker died")  # noqa: SLF001
                except Exception:  # noqa: BLE001
                    pass
            finally:
                with self.lock:
                    self.held -= 1
                    self.done += 1

    def _run(self, trial, name: str, rng: random.Random) -> None:
        from hpo import keys, mirror
        from hpo import distributions as space
        from hpo.backends.optuna.worker import _prune
        from hpo.trial import Outcome, State

        for key, value in ((keys.WORKER, name), (keys.HOST, socket.gethostname()), (keys.PID, os.getpid()),
                           (keys.CUDA_VISIBLE_DEVICES, "")):
            trial.set_user_attr(key, value)
        params = {n: space.suggest(trial, n, d) for n, d in self.dists.items()}
        trial.set_user_attr(keys.MLFLOW_RUN_ID, uuid.uuid4().hex)  # TrialRun.run's on_start
        hold, started = self.hold * rng.uniform(0.7, 1.3), time.perf_counter()
        outcome = None
        for step in range(1, self.epochs + 1):
            time.sleep(hold / self.epochs)
            value = step * float(params["x"])
            if _prune(trial, step, value, self.last_step):
                outcome = Outcome(State.PRUNED, value, reason=f"stopped at step {step}")
                break
        trial.set_user_attr(keys.TRAINER_SECONDS, round(time.perf_counter() - started, 4))
        mirror.finish_trial(self.study, trial._trial_id, outcome or Outcome(State.COMPLETE, value), {},  # noqa: SLF001
                            live=trial)


# -- one N ---------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def hold_window(sim: Sim, seconds: float, target: int, samples: list[int]) -> float:
    """Sleep up to `seconds` while the simulated workers hold >= target trials; returns when it ended."""
    end = time.time() + seconds
    while time.time() < end:
        samples.append(sim.held)
        if sim.held < target:
            break
        time.sleep(0.25)
    return time.time()


def one_scale(a: argparse.Namespace, pg: Pg, n: int, journal: Path | None, work: Path) -> dict:
    import optuna
    import psutil

    from hpo import keys, storage

    db = f"optuna_{n}"
    pg.create_database(db)
    url = pg.url("hpo", db)
    cwd = work / f"n{n}"
    cwd.mkdir()
    (cwd / "sweep.yaml").write_text(SWEEP.format(name=NAME, sleep=a.sleep))
    tracking = f"sqlite:///{cwd / 'mlflow.db'}"
    common = ["--storage", url, "--tracking-uri", tracking, "--workers", "2", "--trainer", "fault_trainers:slow",
              "--keep-models", "0", "--no-report", "--no-progress"]
    out: dict = {"n": n}
    first = 2 if a.smoke else 4
    print(f"N={n}: a first real hpo run ({first} trials)", file=sys.stderr, flush=True)
    hpo(cwd, ["run", "sweep.yaml", "--trials", str(first), *common], a.code)
    print(f"N={n}: pre-fill", file=sys.stderr, flush=True)
    out["prefill"] = prefill(pg.url("bench", db), min(n, a.copy_from or n), seed=n)
    if a.copy_from and a.copy_from < n:
        out["prefill"]["copy"] = copy_prefill(pg.url("bench", db, driver=""), n)
    pg.analyze(db)
    print(f"N={n}: pre-filled {out['prefill']}", file=sys.stderr, flush=True)

    # -- what people read, at N ----------------------------------------------------------------------------
    reps = 1 if a.smoke else a.reps
    read = ["sweep.yaml", "--storage", url]
    out["cli_postgres"] = {"status": latency(cwd, ["status", *read], reps, a.code),
                           "best": latency(cwd, ["best", *read, "--json"], reps, a.code),
                           "report": latency(cwd, ["report", *read], reps, a.code)}
    if journal is not None:
        jpath = cwd / "journal" / "optuna.log"
        out["journal_file"] = copy_journal(journal, jpath, n)
        jread = ["sweep.yaml", "--storage", str(jpath)]
        (cwd / "journal" / "sweep.yaml").write_text(JOURNAL_SWEEP.format(name=NAME))
        out["cli_journal"] = {"status": latency(cwd / "journal", ["status", *jread], reps, a.code),
                              "best": latency(cwd / "journal", ["best", *jread, "--json"], reps, a.code)}
        jpath.unlink()
    print(f"N={n}: reads {json.dumps({k: v for k, v in out.items() if k.startswith('cli')})}", file=sys.stderr,
          flush=True)

    # -- the live sweep ------------------------------------------------------------------------------------
    budget = n + a.live
    s0 = pg.statements(db)
    log, said = open(cwd / "controller.log", "w"), open(cwd / "controller.out", "w")
    launched = time.time()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_controller", "run", "sweep.yaml",
                             "--trials", str(budget), *common], cwd=cwd, stdout=said, stderr=log,
                            env={**env(a.code), CONTROLLER_ROLE_ENV: f"ctl:{pg.password}"})
    try:
        while sum(pg.counts(db).values()) < budget:  # the controller queues the whole budget before its workers start
            if proc.poll() is not None:
                raise SystemExit(f"the controller ended early:\n{(cwd / 'controller.log').read_text()[-3000:]}")
            time.sleep(0.5)
        queued = time.time()
        s1 = pg.statements(db)
        sim = Sim(pg.url("sim", db), a.sim, a.hold, a.stagger)
        sim.start()
        # The windows open once the simulated workers hold their trials, the controller polls (its MLflow set-up
        # is done) and each real worker has finished a live trial.
        deadline, polls = time.time() + a.sim * a.stagger + 600, 0
        while sim.held < a.target or polls < (2 if a.smoke else 4) or pg.real_done(db, n) < 2:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"the sweep never reached {a.target} simulated trials running with the controller "
                                 f"polling (held {sim.held}, polls {polls}; errors: {sim.errors[:3]})")
            time.sleep(0.5)
            polls = by_role(s1, pg.statements(db)).get("ctl", {}).get("polls", 0)
        # window A: counters, CPU
        at_start = pg.counts(db)
        held_a: list[int] = []
        ta0, sa0, da0, ca0 = time.time(), pg.statements(db), pg.database_stats(db), cpu_seconds(proc.pid)
        ta1 = hold_window(sim, a.window_a, a.target, held_a)
        ca1, sa1, da1 = cpu_seconds(proc.pid), pg.statements(db), pg.database_stats(db)
        rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
        # window B: rows read, from the plans
        offset = pg.log.stat().st_size
        pg.explain(True)
        time.sleep(0.5)  # every backend has taken the new setting
        spy = None
        if a.py_spy:  # in window B: window A's CPU figure is the controller's alone
            spy_out = Path(a.out).with_name(f"{Path(a.out).stem}_{n}_controller.txt")
            spy = subprocess.Popen([a.py_spy, "record", "--pid", str(proc.pid), "--duration", str(int(a.window_b)),
                                    "--rate", "20", "--format", "raw", "--nonblocking", "--output", str(spy_out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        held_b: list[int] = []
        tb0 = time.time()
        tb1 = hold_window(sim, a.window_b, a.target, held_b)
        pg.explain(False)
        at_end = pg.counts(db)
        if spy is not None:
            spy.wait(timeout=120)
        time.sleep(0.5)
        plans = explained(pg.log, offset, "ctl", tb0, tb1)
        print(f"N={n}: windows done (A {ta1 - ta0:.0f} s, B {tb1 - tb0:.0f} s); waiting for the sweep to end",
              file=sys.stderr, flush=True)
        if not sim.join(timeout=a.hold * 2 + 900):
            raise SystemExit("simulated workers still running after the sweep should have ended")
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        said.close()
    ended = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"the live hpo run failed ({proc.returncode}):\n{(cwd / 'controller.log').read_text()[-3000:]}")
    result = json.loads((cwd / "controller.out").read_text().strip().splitlines()[-1])
    # What people read once the sweep is over: its controller left runs/NAME/status.json with the study's
    # fingerprint, and nothing wrote since, so `hpo status` / `best` answer from the file.
    out["cli_postgres_after_run"] = {"status": latency(cwd, ["status", *read], reps, a.code),
                                     "best": latency(cwd, ["best", *read, "--json"], reps, a.code)}

    # -- what the study holds now ----------------------------------------------------------------------
    study = optuna.load_study(study_name=NAME, storage=storage.open_storage(pg.url("bench", db)))
    trials = study.get_trials(deepcopy=False)
    c = storage.count(trials)
    live = [t for t in trials if t.number >= n]
    real = [t for t in live if not str(t.user_attrs.get(keys.WORKER, "")).startswith("sim-")]
    simulated = [t for t in live if str(t.user_attrs.get(keys.WORKER, "")).startswith("sim-")]

    def ended_in(ts, lo, hi):
        return [t for t in ts if t.datetime_complete is not None and lo <= t.datetime_complete.timestamp() <= hi]

    gaps = []
    for worker in {t.user_attrs.get(keys.WORKER) for t in real}:
        ends = sorted(t.datetime_complete.timestamp() for t in real
                      if t.user_attrs.get(keys.WORKER) == worker and t.datetime_complete is not None)
        gaps += [b - a_ for a_, b in zip(ends, ends[1:])]
    trainer_s = [float(t.user_attrs.get(keys.TRAINER_SECONDS, 0)) for t in real]
    wa, wb = ta1 - ta0, tb1 - tb0
    roles = by_role(sa0, sa1)
    ctl, hpo_role, sim_role = roles.get("ctl", {}), roles.get("hpo", {}), roles.get("sim", {})
    startup = by_role(s0, s1).get("ctl", {})
    polls_a = ctl.get("polls", 0)
    real_a, sim_a = ended_in(real, ta0, ta1), ended_in(simulated, ta0, ta1)
    d = {k: da1[k] - da0[k] for k in PG_KEYS}
    out["live"] = {
        "budget": budget, "live_trials": a.live, "sim_workers": a.sim, "target_running": a.target, "hold_s": a.hold,
        "sleep_per_epoch_s": a.sleep, "launch_to_queue_filled_s": round(queued - launched, 1),
        "launch_to_end_s": round(ended - launched, 1), "window_a_s": round(wa, 1), "window_b_s": round(wb, 1),
        "sim_held_a": {"min": min(held_a), "mean": round(statistics.mean(held_a), 1)},
        "sim_held_b": {"min": min(held_b), "mean": round(statistics.mean(held_b), 1)},
        "counts_at_window_start": at_start, "counts_at_window_end": at_end,
        "controller_startup": {k: startup.get(k) for k in ("calls", "rows", "blocks", "xacts")},
        "roles_window_a": roles, "database_window_a": d, "explain_window_b": plans,
        "controller_cpu_s": round(ca1 - ca0, 2), "controller_rss_mb": round(rss_mb),
        "sim_first_read_s": sim.first_read_s, "sim_errors": sim.errors[:10], "sim_trials_done": sim.done,
        "sim_claim_races": sim.claim_races,
        "result": result,
    }
    running_a = at_start.get("running", 0)
    out["final"] = {"finished": c.finished, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
                    "retried": c.retried, "running": c.running, "waiting": c.waiting, "interrupted": c.interrupted,
                    "budget": budget, "live_real": len(real), "live_sim": len(simulated)}
    out["attr_keys"] = {"real": sorted(real[-1].user_attrs) if real else [],
                        "sim": sorted(simulated[-1].user_attrs) if simulated else [],
                        "prefill": sorted(trials[n // 2].user_attrs)}
    out["figures"] = {
        "prefill_trials_per_s": out["prefill"]["trials_per_s"],
        "status_s": out["cli_postgres"]["status"]["median_s"],
        "best_s": out["cli_postgres"]["best"]["median_s"],
        "report_s": out["cli_postgres"]["report"]["median_s"],
        "status_after_run_s": out["cli_postgres_after_run"]["status"]["median_s"],
        "best_after_run_s": out["cli_postgres_after_run"]["best"]["median_s"],
        **({"journal_status_s": out["cli_journal"]["status"]["median_s"],
            "journal_best_s": out["cli_journal"]["best"]["median_s"]} if journal is not None else {}),
        "running_at_window": running_a,
        "waiting_at_window": at_start.get("waiting", 0),
        "controller_polls_per_s": round(polls_a / wa, 2),
        "controller_rows_returned_per_poll": round(ctl.get("rows", 0) / max(polls_a, 1), 1),
        "controller_statements_per_poll": round(ctl.get("calls", 0) / max(polls_a, 1), 1),
        "controller_rows_read_per_poll": round(plans["rows_read"] / plans["stale_queries"], 1)
        if plans["stale_queries"] else 0,
        "controller_rows_read_per_s": round(plans["rows_read"] / wb, 1),
        "controller_cpu_pct": round(100 * (ca1 - ca0) / wa, 1),
        "controller_startup_s": round(queued - launched, 1),
        "controller_rss_mb": round(rss_mb),
        "worker_join_read_s": sim.first_read_s,
        "pg_xact_per_s": round((d["xact_commit"] + d["xact_rollback"]) / wa, 1),
        "pg_rows_read_per_s": round((d["tup_returned"] + d["tup_fetched"]) / wa),
        "pg_rows_returned_to_clients_per_s": round(sum(r["rows"] for r in roles.values()) / wa),
        "live_trials_per_s": round((len(real_a) + len(sim_a)) / wa, 2),
        "real_trials_per_s": round(len(real_a) / wa, 2),
        "real_cycle_ms": round(1000 * statistics.median(gaps), 1) if gaps else 0,
        "real_cycle_minus_trainer_ms": round(1000 * (statistics.median(gaps) - statistics.median(trainer_s)), 1)
        if gaps else 0,
        "worker_xact_per_trial": round(hpo_role.get("xacts", 0) / max(len(real_a), 1), 1),
        "worker_statements_per_trial": round(hpo_role.get("calls", 0) / max(len(real_a), 1), 1),
        "worker_heartbeats_per_worker_minute": round(hpo_role.get("heartbeats", 0) / (2 * wa / 60), 1),
        "sim_heartbeats_per_worker_minute": round(sim_role.get("heartbeats", 0) / (a.sim * wa / 60), 1),
    }
    print(f"N={n}: {json.dumps(out['figures'])}", file=sys.stderr, flush=True)
    return out


# -- the journal phase ------------------------------------------------------------------------------------
def proc_io() -> dict[str, int]:
    return {k: int(v) for k, v in (line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())}


def journal_phase(a: argparse.Namespace, work: Path) -> tuple[dict, Path]:
    cwd = work / "journal"
    cwd.mkdir()
    (cwd / "sweep.yaml").write_text(JOURNAL_SWEEP.format(name=NAME))
    print(f"journal: a real hpo run of {a.journal_trials} trivial trials", file=sys.stderr, flush=True)
    from _common import disk_sectors_written

    io0, disk0 = proc_io(), disk_sectors_written()
    took, _ = hpo(cwd, ["run", "sweep.yaml", "--trials", str(a.journal_trials), "--workers", "2", "--trainer",
                        "trivial:train", "--no-progress"], a.code, timeout=7200)
    io1, disk1 = proc_io(), disk_sectors_written()
    files, inodes = {}, {}
    for p in (cwd / "runs").rglob("*"):
        if p.is_file():
            st = p.stat()
            files[str(p.relative_to(cwd / "runs"))] = st.st_size
            inodes[(st.st_dev, st.st_ino)] = st.st_size  # report.html and its artifact copy are one file (a hard link)
    final = sum(inodes.values())
    written = (io1["write_bytes"] - io0["write_bytes"]) - (io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"])
    out = {"trials": a.journal_trials, "wall_s": round(took, 1), "final_bytes": final,
           "final_bytes_counting_links_twice": sum(files.values()),  # bench_speed.py's sum
           "final_files": dict(sorted(files.items(), key=lambda kv: -kv[1])[:8]),
           "process_write_bytes": written, "process_wchar": io1["wchar"] - io0["wchar"],
           "disk_bytes_written": disk1 - disk0,
           "figures": {"journal_trials_per_s": round(a.journal_trials / took, 1),
                       "write_amplification_process": round(written / final, 1),
                       "write_amplification_disk": round((disk1 - disk0) / final, 1),
                       "final_bytes_per_trial": round(final / a.journal_trials),
                       "written_bytes_per_trial": round(written / a.journal_trials)}}
    print(f"journal: {json.dumps(out['figures'])}", file=sys.stderr, flush=True)
    return out, cwd / "runs" / NAME / "optuna.log"


def copy_journal(src: Path, dst: Path, n: int) -> dict:
    """A journal of n trials: the real sweep's records, then its trials' records again with new trial ids."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    head, per_trial, created = [], {}, 0
    order: list[int] = []
    for r in records:
        if r["op_code"] == 4:  # CREATE_TRIAL: ids are given in creation order
            per_trial[created] = [r]
            order.append(created)
            created += 1
        elif "trial_id" in r:
            per_trial[r["trial_id"]].append(r)
        else:
            head.append(r)
    lines = [json.dumps(r, separators=(",", ":")) for r in records]
    next_id = created
    i = 0
    while next_id < n:
        for r in per_trial[order[i % len(order)]]:
            lines.append(json.dumps({**r, "trial_id": next_id} if "trial_id" in r else r, separators=(",", ":")))
        next_id += 1
        i += 1
    if n < created:
        raise SystemExit(f"the journal phase ran {created} trials, more than N={n}")
    dst.write_text("\n".join(lines) + "\n")
    return {"trials": n, "records": len(lines), "bytes": dst.stat().st_size}


# -- report -----------------------------------------------------------------------------------------------
def table(result: dict) -> str:
    scales = result["scales"]
    keys_ = list(dict.fromkeys(k for s in scales for k in s["figures"]))
    lines = ["| figure | " + " | ".join(f"N = {s['n']:,}" for s in scales) + " |",
             "|---|" + "---|" * len(scales)]
    for k in keys_:
        lines.append(f"| {k} | " + " | ".join(str(s["figures"].get(k, "—")) for s in scales) + " |")
    for k, v in result.get("ratios", {}).items():
        lines.append(f"| {k} | {v} |" + " |" * (len(scales) - 1))
    if "journal" in result:
        for k, v in result["journal"]["figures"].items():
            lines.append(f"| journal phase ({result['journal']['trials']} trials): {k} | {v} |" + " |" * (len(scales) - 1))
    return "\n".join(lines)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_controller":
        controller_shim(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[10000, 100000], help="study sizes N to pre-fill")
    ap.add_argument("--live", type=int, default=600, help="M: trials of the live sweep on top of N")
    ap.add_argument("--sim", type=int, default=280, help="simulated workers (threads)")
    ap.add_argument("--target", type=int, default=256, help="simulated trials held RUNNING during the windows")
    ap.add_argument("--hold", type=float, default=120.0, help="seconds a simulated trial runs (x 0.7-1.3)")
    ap.add_argument("--stagger", type=float, default=0.1, help="seconds between simulated workers' starts")
    ap.add_argument("--sleep", type=float, default=0.5, help="the real workers' trainer: seconds per epoch (2 epochs)")
    ap.add_argument("--window-a", type=float, default=40.0, help="seconds of counting (statements, CPU)")
    ap.add_argument("--window-b", type=float, default=30.0, help="seconds of auto_explain (rows read)")
    ap.add_argument("--journal-trials", type=int, default=10000, help="trials of the bytes-written phase (0: skip)")
    ap.add_argument("--label", help="results/scale_LABEL.json (default: the short commit)")
    ap.add_argument("--out", help="the JSON's path (default: bench/results/scale_LABEL.json)")
    ap.add_argument("--code", help="import hpo from this folder (a snapshot of a commit), not the working tree")
    ap.add_argument("--py-spy", help="py-spy binary: record the controller during window B (raw stacks)")
    ap.add_argument("--copy-from", type=int, default=0,
                    help="pre-fill K trials through Optuna's API, then copy them by SQL up to N (copy_prefill)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each of hpo status / best / report at N")
    ap.add_argument("--smoke", action="store_true", help="a small run for the tests (N=60, 6 simulated workers)")
    a = ap.parse_args()
    if a.smoke:
        a.trials, a.live, a.sim, a.target, a.hold, a.stagger = [60], 60, 6, 4, 2.0, 0.05
        a.sleep, a.window_a, a.window_b = 0.2, 3.0, 2.0
        a.journal_trials = min(a.journal_trials, 6)
    if a.code:
        sys.path.insert(0, a.code)
    label = a.label or git("rev-parse", "--short", "HEAD")
    a.out = a.out or str(ROOT / "bench" / "results" / f"scale_{label}.json")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine

    result: dict = {"label": label, "commit": git("rev-parse", "HEAD"),
                    "hpo_dirty": git("status", "--porcelain", "--", "hpo") if not a.code else "",
                    "code": a.code or "the working tree",
                    "machine": machine(), "started": datetime.now().isoformat(timespec="seconds"),
                    "args": {k: v for k, v in vars(a).items() if k not in ("out", "py_spy")}}
    import optuna
    import sqlalchemy

    import hpo

    result["hpo_path"] = str(Path(hpo.__file__).parent)
    result["versions"] = {"optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-scale-") as tmp:
        work = Path(tmp)
        journal = None
        if a.journal_trials:  # first: nothing else writes to the disk meanwhile
            result["journal"], journal = journal_phase(a, work)
        pg = Pg()
        try:
            result["postgres"] = pg.admin.execute("SHOW server_version").fetchone()[0]
            result["scales"] = []
            for n in a.trials:
                result["scales"].append(one_scale(a, pg, n, journal, work))
                Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")  # what there is so far
        finally:
            pg.shutdown()
    if len(result["scales"]) > 1:
        lo, hi = result["scales"][0]["figures"], result["scales"][-1]["figures"]
        result["ratios"] = {
            f"live_trials_per_s, N={result['scales'][-1]['n']} / N={result['scales'][0]['n']}":
                round(hi["live_trials_per_s"] / lo["live_trials_per_s"], 3) if lo["live_trials_per_s"] else None,
            f"real_cycle_ms, N={result['scales'][-1]['n']} / N={result['scales'][0]['n']}":
                round(hi["real_cycle_ms"] / lo["real_cycle_ms"], 3) if lo["real_cycle_ms"] else None}
    result["finished"] = datetime.now().isoformat(timespec="seconds")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(f"\nraw: {a.out}")


if __name__ == "__main__":
    main()

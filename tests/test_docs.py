"""README.md and docs/*.md, checked the way a reader uses them: every command pasteable as shown.

The rule for fenced code blocks (every fence names its language):

  ```bash      commands that work as shown on ONE machine with this checkout: from the repository root,
               with the venv active (`source .venv/bin/activate`), no server, no GPU, no credentials.
  ```console   commands that need more (a PostgreSQL or MLflow server, a Ray cluster, W&B credentials,
               GPUs, another machine); the block's first line says what: `# needs: ...`.
  ```python    code: must compile.      ```yaml / ```toml: must parse.      ```text: output, never run.

One command per line (a trailing backslash continues it); a comment after `#` is fine; no `a / b`
alternatives and no `[--optional]` brackets inside a command.

Checked without starting a process (fast), in bash AND console blocks:
  - every `hpo ...` line parses with hpo.cli.build_parser(): a real subcommand, every flag accepted by that
    subcommand, its values of the right type, nothing left unknown;
  - every `python -m hpo.train ...` line parses with hpo.train_args.parser(); other `python -m X` name a module,
    `python SCRIPT.py` a file of the repository, `python -c CODE` compiles;
  - every `make TARGET` names a Makefile target, and its `ARGS="..."` parse as `hpo run` flags;
  - every `mlflow COMMAND` names an mlflow command, and every option it uses is one of that command's;
  - in bash blocks only: every program is one of those above (or `source`), and every `*.yaml` argument exists;
  - inline code in the prose: `hpo SUBCOMMAND --flag ...` names a real subcommand and its flags, a bare
    `--flag` is one of hpo's (or listed in FOREIGN_FLAGS), `make TARGET` a real target;
  - every relative link or image points at a file that exists, and every `#anchor` at a heading there.
Run end to end in a temp folder (the repository's sweep.yaml, made tiny: 3 epochs on 300 rows), each line
exactly as a bash block shows it, after `source .venv/bin/activate`:
  `hpo --version`, `python -m hpo.train --help`, every `hpo validate|explain sweep.yaml ...` line; then the
  docs' plain `hpo run sweep.yaml` with `--trials 2 --workers 1` appended; then every
  `hpo status|best|trials|report|pause|resume|stop sweep.yaml ...` line on that sweep.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LANGUAGES = {"bash", "console", "python", "yaml", "toml", "text"}
SHELL = {"bash", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "|&"}
# Flags of other tools that the prose names in inline code on their own.
FOREIGN_FLAGS = {"--node-ip-address"}
# Subcommands run end to end before and after the one `hpo run`, in this order.
BEFORE = ("validate", "explain")
AFTER = ("status", "best", "trials", "report", "pause", "resume", "stop")
RUN_LINE = "hpo run sweep.yaml"
TINY_BUDGET = "--trials 2 --workers 1"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    def where(self, offset: int = 0) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line + 1 + offset}"


@dataclass(frozen=True)
class Command:
    block: Block
    offset: int  # line within the block
    source: str  # the logical line as written (continuations joined, comment kept out)
    words: tuple[str, ...]  # one simple command: env assignments removed

    @property
    def where(self) -> str:
        return self.block.where(self.offset)


def _blocks(page: Path) -> list[Block]:
    found, lines, i = [], page.read_text().split("\n"), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*(\S*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang, start = len(m[1]), m[2], m[3], i
        body, i = [], i + 1
        while i < len(lines) and not re.match(rf"^\s*{re.escape(fence)}\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(REPO)}:{start + 1}: a code fence that is never closed"
        found.append(Block(page, start + 1, lang, "\n".join(body)))
        i += 1
    return found


BLOCKS = [b for page in PAGES for b in _blocks(page)]


def _split(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _commands(block: Block) -> list[Command]:
    out, lines, i = [], block.text.split("\n"), 0
    while i < len(lines):
        start, logical = i, lines[i]
        while logical.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i]
        i += 1
        words = _split(logical)
        source = logical.split(" #")[0].strip() if not logical.lstrip().startswith("#") else ""
        simple: list[str] = []
        for w in [*words, ";"]:
            if w in SEPARATORS:
                while simple and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", simple[0]):
                    simple.pop(0)
                if simple:
                    out.append(Command(block, start, source, tuple(simple)))
                simple = []
            else:
                simple.append(w)
    return out


SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL]
COMMANDS = [c for b in SHELL_BLOCKS for c in _commands(b)]


def _program(words: tuple[str, ...]) -> str:
    return Path(words[0]).name if words[0].startswith(".venv/bin/") else words[0]


def _is_hpo(words: tuple[str, ...]) -> bool:
    return _program(words) == "hpo" or (_program(words) in ("python", "python3") and words[1:3] == ("-m", "hpo"))


def _hpo_args(words: tuple[str, ...]) -> list[str]:
    return list(words[1:] if _program(words) == "hpo" else words[3:])


# ---------------------------------------------------------------------------------------------- parsers


def _parser():
    from hpo.cli import build_parser

    return build_parser()


def _subparsers(parser) -> dict:
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _hpo_problem(args: list[str]) -> str | None:
    """None when `hpo ARGS` parses with hpo's own parser, leaving nothing unknown; else what is wrong."""
    from hpo.errors import HpoError

    parser = _parser()
    if args == ["--version"]:
        return None
    if not args or args[0] not in _subparsers(parser):
        return f"no such subcommand: hpo {args[0] if args else ''} (hpo has {', '.join(_subparsers(parser))})"
    args = [a for a in args if a not in ("--help", "-h")]
    known = _subparsers(parser)[args[0]]._option_string_actions
    inexact = [a.split("=")[0] for a in args[1:] if a.startswith("--") and a.split("=")[0] not in known]
    if inexact:  # argparse would take an abbreviation (`--sort` for `--sort-by`): the docs name flags in full
        return f"not flags of `hpo {args[0]}`: {' '.join(inexact)}"
    try:
        _, unknown = parser.parse_known_args(args)
    except HpoError as exc:
        return str(exc)
    except SystemExit as exc:
        return f"argparse exited {exc.code}"
    return f"not accepted by `hpo {args[0]}`: {' '.join(unknown)}" if unknown else None


def _train_problem(args: list[str]) -> str | None:
    from hpo.train_args import parser

    if "--help" in args or "-h" in args:
        return None
    try:
        _, unknown = parser().parse_known_args(args)
    except SystemExit as exc:
        return f"python -m hpo.train exited {exc.code}"
    return f"not accepted by `python -m hpo.train`: {' '.join(unknown)}" if unknown else None


def _make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {t for line in text.splitlines() if (m := re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line))
            for t in [m[1]] if not t.startswith(".")}


def _make_problem(args: list[str]) -> str | None:
    targets = _make_targets()
    for a in args:
        if a.startswith("ARGS="):
            problem = _hpo_problem(["run", "sweep.yaml", *shlex.split(a[len("ARGS="):])])
            if problem:
                return f"ARGS: {problem}"
        elif "=" not in a and not a.startswith("-") and a not in targets:
            return f"no Makefile target {a!r} (it has {', '.join(sorted(targets))})"
    return None


def _mlflow_problem(args: list[str]) -> str | None:
    import click
    from mlflow.cli import cli

    cmd = cli.get_command(click.Context(cli), args[0]) if args else None
    if cmd is None:
        return f"no such mlflow command: {args[:1]}"
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    bad = [a.split("=")[0] for a in args[1:] if a.startswith("-") and a.split("=")[0] not in opts]
    return f"not options of `mlflow {args[0]}`: {' '.join(bad)}" if bad else None


def _python_problem(words: tuple[str, ...]) -> str | None:
    args = list(words[1:])
    if args[:1] == ["-c"]:
        try:
            compile(args[1], "<python -c>", "exec")
        except SyntaxError as exc:
            return f"python -c does not compile: {exc}"
        return None
    if args and args[0].endswith(".py"):
        return None if (REPO / args[0]).exists() else f"no such script in the repository: {args[0]}"
    if args[:1] != ["-m"] or len(args) < 2:
        return None
    if args[1] == "hpo.train":
        return _train_problem(args[2:])
    if importlib.util.find_spec(args[1]) is None:
        return f"no module {args[1]}"
    return None


def _command_problem(c: Command) -> str | None:
    words, program = c.words, _program(c.words)
    shape = [w for w in words if w == "/" or w.startswith("[") or w.endswith("]")]
    if shape:
        return f"not pasteable: {' '.join(shape)} (write one command per line, without [optional] brackets)"
    if _is_hpo(words):
        return _hpo_problem(_hpo_args(words))
    if program in ("python", "python3"):
        return _python_problem(words)
    if program == "make":
        return _make_problem(list(words[1:]))
    if program == "mlflow":
        return _mlflow_problem(list(words[1:]))
    if c.block.lang == "bash":
        if program != "source":
            return (f"`{program}` in a bash block: the test knows hpo, python, make, mlflow and source; "
                    "a command that needs more belongs in a console block with `# needs: ...`")
        if not (REPO / words[1]).exists():
            return f"source {words[1]}: no such file in the repository"
    return None


# ---------------------------------------------------------------------------------------------- static


def test_the_docs_exist_and_have_commands():
    names = {p.name for p in PAGES}
    assert "README.md" in names and len(PAGES) >= 8, names
    assert any(c.block.page.name == "README.md" for c in COMMANDS)
    assert sum(_is_hpo(c.words) for c in COMMANDS) >= 20


def test_every_fence_names_an_allowed_language():
    bad = [f"{b.where(-1)}: ```{b.lang}" for b in BLOCKS if b.lang not in LANGUAGES]
    assert not bad, f"fences need one of {sorted(LANGUAGES)}:\n" + "\n".join(bad)


def test_console_blocks_say_what_they_need():
    bad = [b.where() for b in BLOCKS if b.lang == "console" and not b.text.lstrip().startswith("# needs:")]
    bad += [b.where() for b in BLOCKS if b.lang == "bash" and "# needs:" in b.text]
    assert not bad, "a console block starts with `# needs: ...`; a bash block needs nothing:\n" + "\n".join(bad)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {' '.join(c.words)[:70]}")
def test_command_parses(command: Command):
    problem = _command_problem(command)
    assert problem is None, f"{command.where}: `{command.source}`: {problem}"


def test_bash_blocks_name_files_that_exist():
    bad = [f"{c.where}: {w}" for c in COMMANDS if c.block.lang == "bash"
           for w in c.words[1:] if re.fullmatch(r"[\w./-]+\.ya?ml", w) and not (REPO / w).exists()]
    assert not bad, "bash blocks run from the repository root:\n" + "\n".join(bad)


def test_bash_blocks_have_no_placeholders():
    bad = [f"{c.where}: {c.source}" for c in COMMANDS if c.block.lang == "bash"
           and any("..." in w or re.search(r"<\w+>", w) for w in c.words)]
    assert not bad, "a placeholder belongs in a console block (or in the prose):\n" + "\n".join(bad)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("python", "yaml", "toml")],
                         ids=lambda b: f"{b.where(-1)} {b.lang}")
def test_code_blocks_parse(block: Block):
    if block.lang == "python":
        ast.parse(block.text)
    elif block.lang == "yaml":
        yaml.safe_load(block.text)
    else:
        tomllib = pytest.importorskip("tomllib")
        tomllib.loads(block.text)


def _prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^(\s*)(```+|~~~+).*?^\s*\2\s*$", "", page.read_text(), flags=re.M | re.S)


def _inline_problems(span: str) -> str | None:
    try:
        words = shlex.split(span)
    except ValueError:
        words = span.split()
    if not words:
        return None
    if words[0] == "hpo" and len(words) > 1:
        parser = _parser()
        subs = _subparsers(parser)
        if words[1].startswith("-"):
            known = set(parser._option_string_actions)
            flags = words[1:]
        elif words[1] in subs:
            known = set(subs[words[1]]._option_string_actions)
            flags = words[2:]
        else:
            return f"no such subcommand: hpo {words[1]}"
        bad = [f for f in (w.split("=")[0].rstrip(":,.") for w in flags if w.startswith("--")) if f not in known]
        return f"not accepted by `{' '.join(words[:2])}`: {' '.join(bad)}" if bad else None
    if words[0].startswith("--"):
        flag = words[0].split("=")[0].rstrip(":,.")
        every = {o for p in (_parser(), *_subparsers(_parser()).values()) for o in p._option_string_actions}
        return None if flag in every | FOREIGN_FLAGS else f"{flag} is not a flag of any hpo command"
    if words[0] == "make" and len(words) > 1:
        return _make_problem(words[1:])
    return None


INLINE = [(page, span) for page in PAGES for span in dict.fromkeys(re.findall(r"`([^`\n]+)`", _prose(page)))]


def test_inline_commands_and_flags():
    bad = [f"{page.relative_to(REPO)}: `{span}`: {problem}" for page, span in INLINE
           if (problem := _inline_problems(span))]
    assert not bad, "\n".join(bad)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m[1] or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = _slug(m[1])
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out


def test_relative_links_and_anchors_resolve():
    bad = []
    for page in PAGES:
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                bad.append(f"{page.relative_to(REPO)}: ({target}): no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                bad.append(f"{page.relative_to(REPO)}: ({target}): no heading #{anchor} in {file.name}")
    assert not bad, "\n".join(bad)


def test_every_doc_page_links_back_and_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    bad = [f"{p.name}: not linked from the README" for p in PAGES[1:] if f"(docs/{p.name})" not in readme]
    bad += [f"{p.name}: no link back to the README in its first lines" for p in PAGES[1:]
            if "](../README.md" not in "\n".join(p.read_text().split("\n")[:6])]
    assert not bad, bad


# ---------------------------------------------------------------------------------------------- end to end


def _bash_lines() -> list[str]:
    """Each bash-block command line once, as written (comments left out), in the order the docs show them."""
    return list(dict.fromkeys(c.source for c in COMMANDS if c.block.lang == "bash" and c.source))


def _hpo_sub(line: str) -> tuple[str, list[str]]:
    words = shlex.split(line)
    return (words[1], words[2:]) if words[:1] == ["hpo"] and len(words) > 1 else ("", [])


def _runs(subs: tuple[str, ...]) -> list[str]:
    """The bash lines `hpo SUB sweep.yaml ...` of these subcommands (on the default study), in `subs` order."""
    lines = [line for line in _bash_lines() if _hpo_sub(line)[0] in subs and _hpo_sub(line)[1][:1] == ["sweep.yaml"]
             and not {"--storage", "--study", "--root", "--tracking-uri"} & set(_hpo_sub(line)[1])]
    return sorted(lines, key=lambda line: subs.index(_hpo_sub(line)[0]))


RUN_BEFORE = [line for line in _bash_lines() if line in ("hpo --version", "python -m hpo.train --help")] + _runs(BEFORE)
RUN_AFTER = _runs(AFTER)


def test_the_docs_show_the_commands_this_test_runs():
    shown = _bash_lines()
    assert RUN_LINE in shown, f"no bash block shows `{RUN_LINE}` any more"
    for needed in ("hpo --version", "python -m hpo.train --help"):
        assert needed in shown, f"no bash block shows `{needed}` any more"
    for sub in (*BEFORE, *AFTER):
        assert any(_hpo_sub(line)[0] == sub for line in RUN_BEFORE + RUN_AFTER), f"no `hpo {sub} sweep.yaml` to run"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the repository's sweep.yaml made tiny, and `.venv` pointing at this interpreter's venv."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if not activate.exists():
        pytest.skip("not running inside a venv: `source .venv/bin/activate` cannot be run as the docs show it")
    work = tmp_path_factory.mktemp("docs")
    spec = yaml.safe_load((REPO / "sweep.yaml").read_text())
    spec["parameters"]["epochs"] = {"value": 3}
    spec["parameters"]["max_train_samples"] = {"value": 300}
    spec["parameters"]["max_eval_samples"] = {"value": 200}
    (work / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (work / ".venv").symlink_to(Path(sys.prefix))
    return work


def _bash(line: str, work: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HPO_", "MLFLOW_", "WANDB_", "RAY_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    return subprocess.run(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd=work, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def _expect(line: str, out: subprocess.CompletedProcess, work: Path) -> None:
    assert out.returncode == 0, f"`{line}` -> exit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    sub = _hpo_sub(line)[0]
    text = out.stdout + out.stderr
    expected = {"validate": "ok", "explain": "optuna", "status": "digits-mlp", "best": "val_acc",
                "trials": "val_acc", "report": "report.html", "pause": "paused", "resume": "running",
                "stop": "stop"}
    if line == "hpo --version":
        assert out.stdout.startswith("hpo "), text
    elif line.startswith("python -m hpo.train"):
        assert "--lr" in out.stdout, text
    elif sub in expected:
        assert expected[sub] in text.lower(), f"`{line}`: no {expected[sub]!r} in\n{text}"
    if sub == "report":
        assert (work / "runs" / "digits-mlp" / "report.html").stat().st_size > 100_000


@pytest.mark.parametrize("line", RUN_BEFORE)
def test_runs_before_the_sweep(line: str, workdir: Path):
    _expect(line, _bash(line, workdir), workdir)


@pytest.fixture(scope="module")
def swept(workdir: Path) -> Path:
    line = f"{RUN_LINE} {TINY_BUDGET}"
    out = _bash(line, workdir, timeout=240)
    assert out.returncode == 0, f"`{line}` -> exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert '"complete": 2' in out.stdout, out.stdout[-2000:]
    return workdir


def test_run_the_sweep(swept: Path):
    assert (swept / "runs" / "digits-mlp" / "optuna.log").exists()
    assert (swept / "runs" / "digits-mlp" / "mlflow.db").exists()


@pytest.mark.parametrize("line", RUN_AFTER)
def test_runs_after_the_sweep(line: str, swept: Path):
    _expect(line, _bash(line, swept), swept)

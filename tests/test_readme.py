"""The README and docs/ say what to run: every command they show must name a file that exists and
options that the script knows, and every relative link must lead somewhere.

A command is a line of a fenced code block (or an inline `code` span) that starts with python,
python3, torchrun or bash, after `&&`, `;` or `|` too. Each is checked without running it:
- `python X.py` / `python -m pkg.mod`: the file or module exists in the repository (or is one of the
  tools the docs use: pytest, pip, ruff);
- train.py-style scripts (a top-level DEFAULTS dict): every --key=value names a key of DEFAULTS, with
  a value of its type, and every config file given exists;
- argparse scripts: the parser is caught as the script builds it (parse_args is replaced by a
  function that raises, so nothing runs past it), then every option, subcommand and choice is looked
  up in it;
- other scripts take no options (`--help` aside).
"""

import argparse
import ast
import bisect
import functools
import glob
import importlib
import os
import re
import runpy
import shlex
import sys
import warnings
from unittest import mock

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
README_MAX_LINES = 300
RUNNERS = ("python", "python3", "torchrun", "bash")
TOOLS = {"pytest", "pip", "ruff"}  # modules the docs run with -m that are not the project's


# ---------------------------------------------------------------- reading the pages


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def split_fences(text):
    """(line number, line, inside a fenced block, the block's language) for every line."""
    out, fence, lang = [], None, ""
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence, lang = stripped[:3], stripped[3:].strip().lower()
            continue
        if fence is not None and stripped.startswith(fence):
            fence = None
            continue
        out.append((n, line, fence is not None, lang))
    return out


def shell_segments(line):
    """The commands of one shell line: a trailing comment dropped, split at && || ; |."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unclosed quote: not a command we can read
        return []
    segments, cur = [], []
    for tok in tokens:
        if tok in ("&&", "||", ";", "|"):
            segments.append(cur)
            cur = []
        else:
            cur.append(tok)
    segments.append(cur)
    for s in segments:  # leading VAR=value words (OMP_NUM_THREADS=1 python ...) set the environment
        while s and re.fullmatch(r"[A-Za-z_]\w*=\S*", s[0]):
            del s[0]
    return [s for s in segments if s and s[0] in RUNNERS]


def commands(page):
    """(where, argv) for every command the page shows."""
    found, pending, prose = [], "", []

    def inline(paragraph):  # code spans may wrap across the lines of a paragraph
        if not paragraph:
            return
        text = " ".join(line for _, line in paragraph)
        starts = [0]  # where each line begins in text
        for _, line in paragraph[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        for m in re.finditer(r"`([^`]+)`", text):
            span, n = m.group(1), paragraph[bisect.bisect_right(starts, m.start()) - 1][0]
            if span.split(" ")[0] in RUNNERS and not re.search(r"<|…|\.\.\.", span):
                for argv in shell_segments(span):
                    found.append((f"{page}:{n} (inline)", argv))

    for n, line, in_fence, lang in split_fences(read(page)):
        if not in_fence:
            if line.strip():
                prose.append((n, line.strip()))
            else:
                inline(prose)
                prose = []
            continue
        inline(prose)
        prose = []
        if lang in ("python", "py", "pycon", "text", "console-output"):
            continue
        line = pending + line.strip()
        if line.endswith("\\"):  # a command continued on the next line
            pending = line[:-1] + " "
            continue
        pending = ""
        for argv in shell_segments(line):
            found.append((f"{page}:{n}", argv))
    inline(prose)
    return found


ALL_COMMANDS = [c for page in PAGES for c in commands(page)]


# ---------------------------------------------------------------- what a script accepts


def module_path(name):
    """The file behind `python -m name`, or None when the repository has no such module."""
    base = os.path.join(ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__main__.py")):
        if os.path.isfile(path):
            return path
    return None


def sources_of(path):
    """The source of a script, or of every file of the package a __main__.py belongs to."""
    files = [path]
    if os.path.basename(path) == "__main__.py":
        files = glob.glob(os.path.join(os.path.dirname(path), "*.py"))
    return "\n".join(read(f) for f in files)


class _ParserBuilt(BaseException):
    """Raised in place of parse_args: the script has built its parser; stop it there."""


@functools.cache
def interface(target):
    """What a script accepts: ('defaults', DEFAULTS), ('argparse', parser) or ('none', None).
    target is a script path relative to ROOT, or 'pkg.mod' for python -m."""
    is_module = not target.endswith(".py")
    path = module_path(target) if is_module else os.path.join(ROOT, target)
    source = sources_of(path)
    tree = ast.parse(read(path))
    assigned = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            assigned.update(t.id for t in node.targets if isinstance(t, ast.Name))
    if "DEFAULTS" in assigned:  # train.py's style: a dict of defaults, --key=value on top
        name = target if is_module else os.path.splitext(target)[0].replace("/", ".")
        return "defaults", importlib.import_module(name).DEFAULTS
    if "ArgumentParser" not in source:
        return "none", None
    built = []

    def catch(self, *args, **kwargs):
        built.append(self)
        raise _ParserBuilt

    # should parse_args not be reached, --help still keeps the script from doing work
    argv = [path, "--help"]
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", catch),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", catch),
        mock.patch.object(sys, "argv", argv),
        warnings.catch_warnings(),
    ):
        try:
            # (runpy warns when another test imported the module already: harmless here)
            if is_module:
                warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(path, run_name="__main__")
        except (_ParserBuilt, SystemExit):
            pass
    assert built, f"{target} mentions ArgumentParser but never called parse_args"
    return "argparse", built[0]


def check_defaults_args(where, script, defaults, args):
    for arg in args:
        if arg in ("-h", "--help"):
            continue
        if arg.startswith("-"):
            assert arg.startswith("--") and "=" in arg, (
                f"{where}: {script} takes --key=value, got {arg}"
            )
            key, value = arg[2:].split("=", 1)
            assert key in defaults, f"{where}: {script} has no option --{key}"
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                pass  # a bare word is a string, as train.py reads it
            want = type(defaults[key])
            ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
            ok = ok or (want is float and type(value) is int)
            assert ok, f"{where}: --{key} wants a {want.__name__}, got {value!r}"
        else:
            assert os.path.isfile(os.path.join(ROOT, arg)), f"{where}: config file {arg} not found"


def option_actions(parser):
    return {s: a for a in parser._actions for s in a.option_strings}


def subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


def check_argparse_args(where, script, parser, args):
    options, subs, i = option_actions(parser), subcommands(parser), 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg.startswith("-") and arg != "-":
            key, eq, value = arg.partition("=")
            assert key in options, f"{where}: {script} has no option {key}"
            action = options[key]
            if action.nargs == 0:
                assert not eq, f"{where}: {key} is a flag and takes no value"
                continue
            if not eq:  # the value is the next word
                assert i < len(args), f"{where}: {key} needs a value"
                value, i = args[i], i + 1
            if action.choices is not None:
                assert value in action.choices, (
                    f"{where}: {key}={value} is not one of {action.choices}"
                )
            if action.type in (int, float):
                action.type(value)  # raises on a value of the wrong kind
        elif subs is not None:
            assert arg in subs, (
                f"{where}: {script} has no command {arg!r} (it has {', '.join(subs)})"
            )
            parser = subs[arg]
            options, subs = option_actions(parser), subcommands(parser)
        # other words are positional arguments: paths a run creates or reads, not checked here


def check_python(where, argv):
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] not in ("-m",):
        args = args[1:]  # interpreter flags (-u, -X ...)
    assert args, f"{where}: no script in {' '.join(argv)}"
    if args[0] == "-m":
        name, rest = args[1], args[2:]
        if module_path(name) is None:
            assert name.split(".")[0] in TOOLS, f"{where}: no module {name} in the repository"
            if name == "pytest":
                for a in rest:
                    if not a.startswith("-"):
                        path = a.split("::")[0]
                        assert os.path.exists(os.path.join(ROOT, path)), (
                            f"{where}: {path} not found"
                        )
            if name == "pip":
                for flag, a in zip(rest, rest[1:]):
                    if flag == "-r":
                        assert os.path.isfile(os.path.join(ROOT, a)), f"{where}: {a} not found"
            return
        target = name
    else:
        name, rest = args[0], args[1:]
        assert name.endswith(".py"), f"{where}: {name} is not a Python script"
        assert os.path.isfile(os.path.join(ROOT, name)), f"{where}: {name} not found"
        target = os.path.normpath(name)
    kind, spec = interface(target)
    if kind == "defaults":
        check_defaults_args(where, name, spec, rest)
    elif kind == "argparse":
        check_argparse_args(where, name, spec, rest)
    else:
        extra = [a for a in rest if a not in ("-h", "--help")]
        assert not extra, f"{where}: {name} takes no arguments, got {' '.join(extra)}"


def check_command(where, argv):
    if argv[0] in ("python", "python3"):
        check_python(where, argv)
    elif argv[0] == "torchrun":
        script = [a for a in argv[1:] if not a.startswith("-")]
        assert script, f"{where}: torchrun without a script"
        i = argv.index(script[0])
        check_python(where, ["python", *argv[i:]])
    else:  # bash SCRIPT
        script = [a for a in argv[1:] if not a.startswith("-")]
        assert script and os.path.isfile(os.path.join(ROOT, script[0])), (
            f"{where}: {argv} not found"
        )


# ---------------------------------------------------------------- the tests


def test_pages_show_commands():
    """The extraction finds the README's commands (else every check below would pass on nothing)."""
    readme = {" ".join(argv) for where, argv in ALL_COMMANDS if where.startswith("README.md")}
    assert "python -m pytest -q tests" in readme
    assert "python train.py" in readme
    assert any(c.startswith("python -m study") for c in readme)
    assert len(ALL_COMMANDS) >= 30


@pytest.mark.parametrize("where,argv", ALL_COMMANDS, ids=[w for w, _ in ALL_COMMANDS])
def test_command_names_a_file_and_options_that_exist(where, argv):
    check_command(where, argv)


@pytest.mark.parametrize(
    "line",
    [
        "python train.py config/lora_mixture.py --lora_rank=4",  # no such key
        "python train.py config/lora_mixtures.py",  # no such config file
        "python train.py --max_iters=ten",  # an int key given a word
        "python trian.py",  # no such script
        "python -m studies --quick",  # no such module
        "python -m study --quik",  # no such flag
        "python -m study --stage=mixtures",  # not one of the stages
        "python -m study --quick=1",  # a flag given a value
        "python -m formats.interop export-pef a b",  # no such command
        "python -m formats.interop export-peft a b --bse=gpt2",  # no such option of the command
        "python bench.py --threads=two",  # an int option given a word
        "python data.py --fast",  # data.py takes no options
        "python -m pytest -q tests/test_nothing.py",  # no such test file
        "bash .ci/nothing",
    ],
)
def test_a_wrong_command_is_caught(line):
    """The checks can fail: each of these mistakes is refused."""
    (argv,) = shell_segments(line)
    with pytest.raises((AssertionError, ValueError)):
        check_command("example", argv)


def test_readme_is_short():
    n = len(read("README.md").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines; keep it <= {README_MAX_LINES}, details in docs/"
    )


def slug(heading):
    """GitHub's anchor for a heading: links reduced to their text, lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(page):
    seen, out = {}, set()
    for _, line, in_fence, _ in split_fences(read(page)):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def links(page):
    for n, line, in_fence, _ in split_fences(read(page)):
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            yield n, target


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    bad, count = [], 0
    for n, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        count += 1
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else None
        if file is not None and not os.path.exists(file):
            bad.append(f"{page}:{n}: {target} (no such file)")
        elif anchor and (file is None or file.endswith(".md")):
            linked = os.path.relpath(file, ROOT) if file else page
            if anchor not in anchors(linked):
                bad.append(f"{page}:{n}: {target} (no heading #{anchor} in {linked})")
    assert not bad, "broken links:\n" + "\n".join(bad)
    if page == "README.md":
        assert count >= 5, "the README links its docs pages"

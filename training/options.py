"""
train.py's options, nanoGPT style: one block of commented defaults in the script, then config files
(plain Python assignments), then --key=value arguments, each value type-checked against its default.
The comment beside a default is its --help text.
"""

import ast
import builtins
import io
import math
import os
import sys
import tokenize
import traceback


def given_options(argv, defaults, script):
    """The keys that config files and then --key=value arguments set, type-checked against `defaults`
    (the script's block of commented defaults; --help prints help_text(script, defaults))."""
    given = {}

    def setkey(k, v, where):
        if k not in defaults:
            raise ValueError(
                f"unknown option {k!r} in {where} (python {os.path.basename(script)} --help lists them)"
            )
        d = defaults[k]
        ok = isinstance(v, type(d)) and not (isinstance(v, bool) and not isinstance(d, bool))
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise ValueError(f"option {k} expects {type(d).__name__} but got {v!r} in {where}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"option {k} must be a finite number but got {v!r} in {where}")
        given[k] = v

    for arg in argv:
        if arg in ('-h', '--help'):
            print(help_text(script, defaults))
            sys.exit(0)
        if arg.startswith('--'):
            if '=' not in arg:
                raise ValueError(f"expected --key=value, got {arg!r}")
            k, v = arg[2:].split('=', 1)
            try:
                v = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass  # a bare word is a string
            setkey(k, v, 'the command line')
        else:
            for k, v in run_config_file(arg).items():
                setkey(k, v, arg)
    return given


def run_config_file(path):
    """The names a config file assigns. Config files are trusted Python in this repo; an error in one is
    reported as one line naming the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found (see config/ for examples)")
    scope = {}
    try:
        with open(path, encoding='utf-8') as f:
            # (the option `compile` hides the builtin)
            exec(builtins.compile(f.read(), path, 'exec'), {}, scope)
    except SyntaxError as e:
        raise ValueError(
            f"config file {path}, line {e.lineno}: {e.msg} (config files are plain Python assignments)"
        ) from None
    except KeyboardInterrupt as e:  # Ctrl-C while it ran (or it raised one): say where
        line = [fr.lineno for fr in traceback.extract_tb(e.__traceback__) if fr.filename == path]
        raise KeyboardInterrupt(f"config file {path}, line {(line or ['?'])[-1]}") from None
    except Exception as e:
        line = [
            fr.lineno for fr in traceback.extract_tb(e.__traceback__) if fr.filename == path
        ] or ['?']
        raise ValueError(f"config file {path}, line {line[-1]}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in scope.items() if not k.startswith('_')}


def help_text(script, defaults):
    """The script's docstring, then every key with its default and the comment beside it in the
    script's block of defaults (from the line '# I/O' to 'DEFAULTS = '), under its section's comment."""
    notes, sections = {}, {}
    with open(script, encoding='utf-8') as f:
        source = f.read()
    block = source[source.index('# I/O') : source.index('DEFAULTS = ')]
    key, section = None, None
    for tok in tokenize.generate_tokens(io.StringIO(block).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 0:
            key = tok.string
            sections.setdefault(key, section)
        elif tok.type == tokenize.COMMENT and tok.start[1] == 0:
            section, key = tok.string[1:].strip(), None
        elif tok.type == tokenize.COMMENT and key in defaults:
            notes[key] = tok.string[1:].strip()
        elif tok.type == tokenize.NEWLINE:
            key = None
    doc = ast.get_docstring(ast.parse(source)) or ''
    lines, shown = [doc.strip(), '', 'options, their defaults and what they do:'], None
    for k, v in defaults.items():
        if sections.get(k, shown) != shown:
            shown = sections[k]
            lines.append(f'# {shown}')
        lines.append(f'  --{k}={v!r}'.ljust(36) + ' ' + notes.get(k, ''))
    return '\n'.join(line.rstrip() for line in lines)

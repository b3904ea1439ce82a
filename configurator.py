"""
Strict overrides for a script's settings, from Python config files and --key=value flags:

    python train.py config/bert_tiny.py --batch_size=16 --compile=False

A script keeps its settings as module globals, each with a comment, and reads the run's settings
with `cfg, given = read_settings(globals(), argv)`; `--help` prints them with their defaults and
comments. The script then checks the values (ranges, choices) in one function and passes what is
wrong to `require`, so that every problem is reported at once, before any work starts.

A config file is plain Python that assigns some of those names; a flag is `--key=value`. Both take
literals and arithmetic on them (`tokens_per_step = 256 * 128`), parsed with the ast module and never
executed; a flag's bare word that is neither is a string (`--out_dir=out-tiny`). Every key must
already exist, every value must have the type of its default (an int is fine where a float is
expected), and None is only for settings whose default is None. Every problem is reported at once,
each naming its key, with the closest known names for a misspelt one.
"""
import ast
import difflib
import io
import sys
import tokenize
from types import SimpleNamespace


_SETTING_TYPES = (bool, int, float, str, list, tuple, type(None))


def _check(key, value, defaults, where):
    """value with the type of key's default; a ValueError that says what is wrong otherwise."""
    known = sorted(k for k, v in defaults.items() if not k.startswith("_") and isinstance(v, _SETTING_TYPES))
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known settings: {', '.join(known)}"
        raise ValueError(f"{where}: unknown setting '{key}'; {hint} (--help lists them)")
    default = defaults[key]
    if default is None:
        return value  # a None default takes any value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if type(value) is not type(default):
        raise ValueError(f"{where}: '{key}' must be {type(default).__name__}, got {value!r} ({type(value).__name__})")
    return value


def _literal(text):
    """A flag's value: a literal, or arithmetic on literals as in config files (--tokens_per_step=256*128);
    anything else is the string itself (--dataset=openwebtext, --out_dir=out-tiny)."""
    try:
        return _evaluate(ast.parse(text.strip(), mode="eval").body, {})
    except (ValueError, TypeError, SyntaxError, ArithmeticError, RecursionError):
        return text


def _read_config_file(path):
    try:
        with open(path) as f:
            source = f.read()
    except OSError as e:
        raise SystemExit(f"cannot read config file {path}: {e.strerror}")
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise SystemExit(f"{path}:{e.lineno}: syntax error in config file: {e.msg}")
    # Config files are a list of `name = <literal expression>` lines (comments welcome). Values may
    # use arithmetic on literals and on names assigned earlier in the same file, so a file can show
    # its tokens-per-step arithmetic; nothing in them is executed beyond that. Names that start
    # with an underscore are local to the file.
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise SystemExit(f"{path}:{node.lineno}: config files may only hold `name = value` lines")
        try:
            values[node.targets[0].id] = _evaluate(node.value, values)
        except (ValueError, TypeError, ArithmeticError) as e:  # 1 / 0, "a" + 1, 10.0 ** 1000
            raise SystemExit(f"{path}:{node.lineno}: {e}")
    return values


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}


def _evaluate(node, names):
    """A literal, a name assigned earlier in the file, or + - * / // ** of those."""
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f"'{node.id}' is not assigned earlier in this file")
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ValueError(f"exponent {right} is too large for a setting")  # 10**10**10 would never finish
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, names)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"value must be a literal or arithmetic on literals, got `{ast.unparse(node)}`")


def configure(settings, argv=None):
    """Apply config files and --key=value flags from argv (default sys.argv[1:]) to the dict `settings`
    in place, or stop with every problem found. Returns {name: where its value came from}: "flag",
    or the config file's path; the last one wins."""
    argv = sys.argv[1:] if argv is None else argv
    given, problems = {}, []
    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                problems.append(f"flag {arg} needs a value: --{key}=VALUE")
                continue
            value = _literal(text)
            if isinstance(settings.get(key), str) and not isinstance(value, str) and value is not None:
                value = text  # --wandb_run_name=2024 is the name "2024"
            pairs, where = [(key, value)], f"flag {arg}"
        else:
            pairs, where = _read_config_file(arg).items(), f"config file {arg}"
        for key, value in pairs:
            if key.startswith("_") and not arg.startswith("--"):
                continue  # a helper name local to the file, e.g. _tokens_per_step
            try:
                settings[key] = _check(key, value, settings, where)
            except ValueError as e:
                problems.append(str(e))
                continue
            given.pop(key, None)  # so that the order is the order of the last assignment
            given[key] = "flag" if arg.startswith("--") else arg
    require(problems, "command line")
    return given


# -----------------------------------------------------------------------------
# The idiom of the scripts

def _settings_in_source(path):
    """The script's settings, in order: top-level `name = value` lines with a lower-case name, with the
    comment at the end of the line and the section header (a comment line) above it."""
    with open(path) as f:
        source = f.read()
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("# ").rstrip())
    out = []
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.islower() or name.startswith("_"):
            continue
        comment = [comments[n][1] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        n = node.end_lineno + 1  # a comment continued on the lines below: indented, alone on its line
        while n in comments and comments[n][0] > 0 and lines[n - 1].lstrip().startswith("#"):
            comment.append(comments[n][1])
            n += 1
        header = comments.get(node.lineno - 1)
        header = header[1] if header and header[0] == 0 and header[1].strip("-") else None  # not a ----- rule
        out.append((name, " ".join(comment), header))
    return out


def read_settings(script_globals, argv=None):
    """The settings of the script whose globals() these are, overridden by argv (config files and
    --key=value flags; default sys.argv[1:]). Returns (cfg, given): a namespace of every setting, and
    {name: "flag" or the config file} for the names that argv set. `--help` prints the settings and exits."""
    argv = sys.argv[1:] if argv is None else list(argv)
    listed = _settings_in_source(script_globals["__file__"])
    defaults = {name: script_globals[name] for name, _, _ in listed
                if isinstance(script_globals.get(name), _SETTING_TYPES)}
    if "--help" in argv or "-h" in argv:
        doc = (script_globals.get("__doc__") or "").strip()
        print(doc + "\n\nSettings (config files and --key=value flags override them):")
        for name, comment, header in listed:
            if name not in defaults:
                continue
            if header:
                print(f"  # {header}")
            flag = f"  --{name}={defaults[name]!r}"
            print(f"{flag.ljust(36)}  {comment}" if comment else flag)
        sys.exit(0)
    settings = dict(defaults)
    given = configure(settings, argv)
    return SimpleNamespace(**settings), given


def require(problems, what="settings"):
    """Stop with one message that lists every problem found, or return when there are none."""
    problems = [p for p in problems if p]
    if len(problems) == 1:
        raise SystemExit(problems[0])
    if problems:
        raise SystemExit(f"{len(problems)} problems with the {what}:\n" + "\n".join(f"  - {p}" for p in problems))

"""
Strict overrides for a script's settings, from Python config files and --key=value flags:

    python train.py config/bert_tiny.py --batch_size=16 --compile=False

A script keeps its settings as module globals and calls `configure(globals())` (or passes any dict
of defaults). A config file is plain Python that assigns some of those names; a flag is
`--key=value`, its value read with ast.literal_eval (a bare word that is not a Python literal is
taken as a string). Every key must already exist, and every value must have the type of its
default (an int is fine where a float is expected); anything else stops with a message that names
the key.
"""
import ast
import sys


_SETTING_TYPES = (bool, int, float, str, list, tuple, type(None))


def _check(key, value, defaults, where):
    known = sorted(k for k, v in defaults.items() if not k.startswith("_") and isinstance(v, _SETTING_TYPES))
    if key not in known:
        raise SystemExit(f"{where}: unknown setting '{key}'. Known settings: {', '.join(known)}")
    default = defaults[key]
    if default is None or value is None:
        return value  # a None default takes any value, and any setting may be switched off with None
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(default)(value)
    if type(value) is not type(default):
        raise SystemExit(f"{where}: '{key}' must be {type(default).__name__}, got {value!r} "
                         f"({type(value).__name__})")
    return value


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # --dataset=openwebtext: a plain string


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
        return _BINOPS[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, names)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"value must be a literal or arithmetic on literals, got `{ast.unparse(node)}`")


def configure(settings, argv=None):
    """Apply config files and --key=value flags from argv (default sys.argv[1:]) to the dict
    `settings` in place. Returns the names that were changed."""
    argv = sys.argv[1:] if argv is None else argv
    changed = []
    for arg in argv:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep:
                raise SystemExit(f"flag {arg} needs a value: --{key}=VALUE")
            value = _literal(text)
            if isinstance(settings.get(key), str) and not isinstance(value, str) and value is not None:
                value = text  # --wandb_run_name=2024 is the name "2024"
            settings[key] = _check(key, value, settings, f"flag {arg}")
            changed.append(key)
        else:
            for key, value in _read_config_file(arg).items():
                if key.startswith("_"):
                    continue  # a helper name local to the file, e.g. _tokens_per_step
                settings[key] = _check(key, value, settings, f"config file {arg}")
                changed.append(key)
    return changed

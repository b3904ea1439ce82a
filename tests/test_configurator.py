"""configurator.py: strict overrides from config files and --key=value flags."""
import glob
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configurator import configure, read_settings, require  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def defaults():
    return dict(batch_size=32, dropout=0.1, compile=True, out_dir="out", data_dir="data/x", betas=(0.9, 0.99),
                layers=[1, 2], init=None, _private=1, helper=len)


def test_flags_override_with_their_types():
    s = defaults()
    changed = configure(s, ["--batch_size=8", "--dropout=0", "--compile=False", "--out_dir=out-tiny",
                            "--data_dir=data/tinystories", "--betas=[0.9, 0.999]", "--layers=(3,)", "--init=resume"])
    assert s["batch_size"] == 8 and s["compile"] is False
    assert s["dropout"] == 0.0 and isinstance(s["dropout"], float)   # an int is fine where a float is expected
    assert s["out_dir"] == "out-tiny" and s["data_dir"] == "data/tinystories"  # bare words are strings
    assert s["betas"] == (0.9, 0.999) and s["layers"] == [3]        # the default's container type is kept
    assert s["init"] == "resume"                                     # a None default takes any type
    assert list(changed) == ["batch_size", "dropout", "compile", "out_dir", "data_dir", "betas", "layers", "init"]
    assert set(changed.values()) == {"flag"}


def test_quoted_strings_and_none():
    s = defaults()
    configure(s, ["--out_dir='123'", "--init=None"])
    assert s["out_dir"] == "123" and s["init"] is None
    for flag in ("--batch_size=None", "--out_dir=None"):  # None only where the default is None
        with pytest.raises(SystemExit, match="must be"):
            configure(defaults(), [flag])


@pytest.mark.parametrize("flag, words", [
    ("--batch_size=8.5", ["batch_size", "int", "float"]),
    ("--batch_size=True", ["batch_size", "int", "bool"]),     # bool is an int in Python, not here
    ("--compile=1", ["compile", "bool", "int"]),
    ("--dropout=True", ["dropout", "float", "bool"]),
    ("--dropout=high", ["dropout", "float", "str"]),
    ("--betas=0.9", ["betas", "tuple", "float"]),
])
def test_wrong_type_names_the_key_and_the_type(flag, words):
    with pytest.raises(SystemExit) as e:
        configure(defaults(), [flag])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_misspelt_flag_gets_the_close_names():
    with pytest.raises(SystemExit, match="unknown setting 'batchsize'; did you mean batch_size?"):
        configure(defaults(), ["--batchsize=8"])


@pytest.mark.parametrize("flag", ["--_private=2", "--helper=3", "--xyzzy=1"])
def test_an_unknown_flag_with_no_close_name_lists_the_settings(flag):
    with pytest.raises(SystemExit, match="unknown setting") as e:
        configure(defaults(), [flag])
    known = {k.strip() for k in str(e.value).split("known settings: ")[1].split(" (")[0].split(", ")}
    assert "batch_size" in known and not {"_private", "helper"} & known


def test_every_bad_flag_in_one_report(tmp_path):
    path = write(tmp_path, "dropuot = 0.2\n")
    with pytest.raises(SystemExit) as e:
        configure(defaults(), ["--batch_sise=8", "--compile", "--dropout=high", path, "--out_dir=ok"])
    message = str(e.value)
    assert message.startswith("4 problems")
    for words in ("'batch_sise'; did you mean batch_size", "--compile needs a value", "'dropout' must be float",
                  "cfg.py: unknown setting 'dropuot'; did you mean dropout"):
        assert words in message, message


def test_flags_take_arithmetic_like_config_files():
    s = defaults()
    configure(s, ["--batch_size=256*128", "--dropout=1/4", "--layers=[8]", "--out_dir=out-2*3", "--data_dir=a/b"])
    assert s["batch_size"] == 32768 and s["dropout"] == 0.25 and s["layers"] == [8]
    assert s["out_dir"] == "out-2*3" and s["data_dir"] == "a/b"  # a string setting keeps its text
    for flag in ("--batch_size=10**10**10", "--batch_size=open('x')", "--batch_size=1//0"):
        with pytest.raises(SystemExit, match="'batch_size' must be int"):
            configure(defaults(), [flag])  # never evaluated beyond arithmetic, and never hangs


def test_the_documented_two_phase_command_reads_as_written():
    """BERT's first phase, as config/bert_base.py writes it on its command line: 90% of the steps at 128
    tokens, on 8 GPUs."""
    import shlex
    import train
    source = open(os.path.join(ROOT, "config", "bert_base.py")).read()
    flags = shlex.split(source.split("run with\n# ")[1].split(", then")[0].replace("\n# ", " "))
    assert flags and all(f.startswith("--") for f in flags), flags
    cfg, given = read_settings(vars(train), [os.path.join(ROOT, "config", "bert_base.py")] + flags)
    assert (cfg.block_size, cfg.tokens_per_step, cfg.run_steps) == (128, 256 * 128, 900_000)
    assert [p for p in train.check_settings(cfg, world_size=8) if p] == []


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_config_file(tmp_path):
    path = write(tmp_path, '"""a docstring"""\n'
                           "# tokens per step: 4 x 128 = 512\n"
                           "_per_row = 128\n"
                           "batch_size = 4 * _per_row // 128 + 2 ** 2 - 4\n"
                           "dropout = -0.0 + 1 / 4\n"
                           "out_dir = 'out-' + 'tiny'\n"
                           "betas = (0.9, 0.95)\n")
    s = defaults()
    changed = configure(s, [path])
    assert s["batch_size"] == 4 and s["dropout"] == 0.25 and s["out_dir"] == "out-tiny" and s["betas"] == (0.9, 0.95)
    assert s["_private"] == 1 and "_per_row" not in s          # underscore names stay in the file
    assert changed == dict.fromkeys(["batch_size", "dropout", "out_dir", "betas"], path)


def test_later_arguments_win(tmp_path):
    path = write(tmp_path, "batch_size = 4\ndropout = 0.2\n")
    s = defaults()
    configure(s, ["--batch_size=16", path, "--dropout=0.3"])
    assert s["batch_size"] == 4 and s["dropout"] == 0.3


@pytest.mark.parametrize("text, match", [
    ("batch_sise = 4\n", "cfg.py: unknown setting 'batch_sise'"),
    ("batch_size = 4.5\n", "'batch_size' must be int"),
    ("batch_size = (\n", r"cfg.py:1: syntax error"),
    ("import os\n", r"cfg.py:1: config files may only hold"),
    ("dropout = 0.1\nif True:\n    dropout = 0.2\n", r"cfg.py:2: config files may only hold"),
    ("a = b = 1\n", "config files may only hold"),
    ("batch_size: int = 4\n", "config files may only hold"),
    ("batch_size = other * 2\n", r"cfg.py:1: 'other' is not assigned earlier"),
    ("batch_size = batch_size * 2\n", "'batch_size' is not assigned earlier"),  # no reading the defaults
    ("out_dir = open('x').read()\n", "must be a literal or arithmetic"),
    ("out_dir = __import__('os').getcwd()\n", "must be a literal or arithmetic"),
    ("dropout = [x for x in (1, 2)]\n", "must be a literal or arithmetic"),
    ("batch_size = 1 // 0\n", r"cfg.py:1: .*division"),
    ("out_dir = 'a' + 1\n", r"cfg.py:1: .*str"),
    ("dropout = 10.0 ** 1000\n", r"cfg.py:1: .*"),
])
def test_config_file_errors(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(SystemExit, match=match):
        configure(defaults(), [path])


def test_config_files_execute_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = write(tmp_path, f"out_dir = __import__('pathlib').Path({str(marker)!r}).touch()\n")
    with pytest.raises(SystemExit):
        configure(defaults(), [path])
    assert not marker.exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(SystemExit, match="cannot read config file"):
        configure(defaults(), [str(tmp_path / "nope.py")])


def test_the_shipped_configs_pass_their_scripts_checks():
    import finetune
    import train
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "*.py"))):
        script = finetune if os.path.basename(path).startswith("finetune_") else train
        cfg, given = read_settings(vars(script), [path])
        assert given, path
        assert [p for p in script.check_settings(cfg) if p] == [], path
    base, _ = read_settings(vars(train), [os.path.join(ROOT, "config", "bert_base.py")])
    defaults, _ = read_settings(vars(train), [])
    assert {k: v for k, v in vars(base).items() if k != "out_dir"} == \
        {k: v for k, v in vars(defaults).items() if k != "out_dir"}, "bert_base.py should spell out the defaults"


@pytest.mark.parametrize("script", ["train.py", "finetune.py", "bench.py"])
def test_help_lists_every_setting_with_its_default_and_comment(script, capsys):
    import importlib
    module = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as e:
        read_settings(vars(module), ["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(module.__doc__.strip())
    assert "--device='auto'" in out and "Settings" in out and "-----" not in out.split("Settings")[1]
    if script == "train.py":
        assert "--eval_interval=2000" in out and "steps between evaluations" in out
        assert "# I/O" in out and "--tokens_per_step=131072" in out


def test_settings_checks_report_every_problem_at_once():
    import train
    cfg, _ = read_settings(vars(train), ["--batch_size=0", "--dropout=2.0", "--n_head=5", "--decay=linaer",
                                         "--mask_prob=0", "--device=tpu"])
    problems = [p for p in train.check_settings(cfg) if p]
    for word in ("batch_size", "dropout", "n_head", "decay", "mask_prob", "device"):
        assert any(word in p for p in problems), (word, problems)
    with pytest.raises(SystemExit, match="problems with the settings"):
        require(problems)


def test_string_setting_takes_digits_as_text():
    """A str setting takes a flag as text even where it reads as a number; a config file stays strict."""
    settings = {"wandb_run_name": "bert", "dropout": 0.1}
    configure(settings, ["--wandb_run_name=2024", "--dropout=0"])
    assert settings == {"wandb_run_name": "2024", "dropout": 0.0}

"""configurator.py: strict overrides from config files and --key=value flags."""
import glob
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configurator import configure  # noqa: E402

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
    assert changed == ["batch_size", "dropout", "compile", "out_dir", "data_dir", "betas", "layers", "init"]


def test_quoted_strings_and_none():
    s = defaults()
    configure(s, ["--out_dir='123'", "--batch_size=None"])
    assert s["out_dir"] == "123" and s["batch_size"] is None


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


@pytest.mark.parametrize("flag", ["--batchsize=8", "--_private=2", "--helper=3", "--configure=1"])
def test_unknown_flag(flag):
    with pytest.raises(SystemExit, match="unknown setting") as e:
        configure(defaults(), [flag])
    known = str(e.value).split("Known settings:")[1].split(", ")
    assert "batch_size" in [k.strip() for k in known] and not {"_private", "helper"} & {k.strip() for k in known}


def test_flag_without_value():
    with pytest.raises(SystemExit, match="needs a value"):
        configure(defaults(), ["--compile"])


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
    assert changed == ["batch_size", "dropout", "out_dir", "betas"]


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


def test_the_shipped_configs_fit_train_py():
    import train
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "bert_*.py"))):
        s = dict(train.SETTINGS)
        changed = configure(s, [path])
        assert changed, path
        assert s["tokens_per_step"] % (s["batch_size"] * s["block_size"]) == 0, path
        assert s["block_size"] <= s["max_positions"] and s["n_embd"] % s["n_head"] == 0, path
    base = dict(train.SETTINGS)
    configure(base, [os.path.join(ROOT, "config", "bert_base.py")])
    assert {k: v for k, v in base.items() if k not in ("out_dir",)} == \
        {k: v for k, v in train.SETTINGS.items() if k not in ("out_dir",)}, "bert_base.py should spell out the defaults"


def test_string_setting_takes_digits_as_text():
    """A str setting takes a flag as text even where it reads as a number; a config file stays strict."""
    settings = {"wandb_run_name": "bert", "dropout": 0.1}
    configure(settings, ["--wandb_run_name=2024", "--dropout=0"])
    assert settings == {"wandb_run_name": "2024", "dropout": 0.0}

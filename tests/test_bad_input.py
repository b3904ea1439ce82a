"""Bad input, end to end: each case must end with one clear message that says what to do, no traceback,
and every file already in the out and data folders byte for byte as it was. Most cases call the script's
main() in this process (`call`); the ones where the process itself is the point (its exit code and
stderr, signals, the environment, missing packages) run the real command line (`run`)."""
import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import runtime
from test_finetune import make_task, write_csv
from test_train import counting_docs, read_log, tiny_run, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # tiny models; output as it is printed


def run(script, *args, env=None, cwd=ROOT, timeout=180):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd,
                          env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def call(script, *args):
    """script's main(args) in this process, seen as `run` sees a process: returncode, stdout, stderr (the
    message of a SystemExit). Any other exception fails the test, as a traceback would."""
    module = importlib.import_module(script.removesuffix(".py"))
    out, code, err = io.StringIO(), 0, ""
    try:
        with contextlib.redirect_stdout(out):
            module.main([str(a) for a in args])
    except SystemExit as e:
        code, err = (e.code, "") if isinstance(e.code, int) or e.code is None else (1, str(e.code))
    return types.SimpleNamespace(returncode=code or 0, stdout=out.getvalue(), stderr=err)


def one_message(r, *words, returncode=1):
    """r failed with one message (a line, or one line and a list under it) that holds every word; no traceback."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.returncode == returncode, (r.returncode, r.stderr[-3000:])
    message = r.stderr.strip()
    lines = message.splitlines()
    assert lines and all(line.startswith("  - ") for line in lines[1:]), message
    for w in words:
        assert w in message, message
    return message


def md5s(*folders):
    """{path: md5} of every file under the folders."""
    out = {}
    for folder in folders:
        for dirpath, _, names in os.walk(folder):
            for n in names:
                with open(os.path.join(dirpath, n), "rb") as f:
                    out[os.path.join(dirpath, n)] = hashlib.md5(f.read()).hexdigest()
    return out


def copy(folder, tmp_path, name="out"):
    return shutil.copytree(folder, tmp_path / name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    return write_corpus(tmp_path_factory.mktemp("data"), counting_docs(100, rng), counting_docs(20, rng))


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    """out_dir of a 2-step train.py run: ckpt.pt (step 2) and log.jsonl."""
    out = tmp_path_factory.mktemp("pretrained")
    r = call("train.py", *tiny_run(data, out, "--max_steps=2", "--eval_interval=2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("task")
    val = write_csv(folder / "val.csv", make_task("sentiment", 32, 1))
    return [f"--train_file={write_csv(folder / 'train.csv', make_task('sentiment', 64, 0))}", f"--val_file={val}",
            f"--test_file={val}"]


def finetune_run(pretrained, out, task, *flags):
    return [f"--init_from={pretrained}", f"--out_dir={out}", *task, "--device=cpu", "--compile=False",
            "--block_size=32", "--examples_per_step=16", "--epochs=1", "--log_interval=1000", *flags]


@pytest.fixture(scope="module")
def finetuned(pretrained, task, tmp_path_factory):
    """out_dir of a 1-epoch finetune.py run: ckpt.pt, log.jsonl, predictions.tsv."""
    out = tmp_path_factory.mktemp("finetuned")
    r = call("finetune.py", *finetune_run(pretrained, out, task, "--overwrite=True"))  # mktemp made the folder
    assert r.returncode == 0, r.stderr[-3000:]
    return out


# -----------------------------------------------------------------------------
# A run into a folder that holds one already

def test_train_refuses_a_folder_with_a_checkpoint_unless_told(data, pretrained, tmp_path):
    out = copy(pretrained, tmp_path)
    before = md5s(out, data)
    r = call("train.py", *tiny_run(data, out, "--max_steps=2", "--eval_interval=2"))
    one_message(r, "already holds a pretraining checkpoint", "--init_from=resume", "--overwrite=True")
    assert md5s(out, data) == before
    r = call("train.py", *tiny_run(data, out, "--max_steps=3", "--eval_interval=3", "--overwrite=True"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [(rec["step"], "lr" in rec) for rec in read_log(out)] == [(0, False), (1, True), (2, True), (3, True),
                                                                     (3, False)]  # a fresh log
    assert not (out / "log.jsonl.new").exists()  # moved over the earlier run's log at the first save
    assert runtime.load_checkpoint(str(out))["step"] == 3


def test_resume_drops_the_log_lines_past_its_checkpoint(data, pretrained, tmp_path):
    out = copy(pretrained, tmp_path)
    with open(out / "log.jsonl", "a") as f:  # a run that died after its step-2 checkpoint, mid-line
        f.write(json.dumps({"step": 3, "loss": 1.0, "lr": 1.0}) + "\n" + '{"step": 4, "lo')
    r = call("train.py", *tiny_run(data, out, "--max_steps=4", "--eval_interval=2", "--init_from=resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    log = read_log(out)
    assert [rec["step"] for rec in log if "lr" in rec] == [1, 2, 3, 4]
    assert [rec["step"] for rec in log if "val_loss" in rec] == [0, 2, 4]
    assert not any(rec.get("lr") == 1.0 for rec in log)


def test_finetune_refuses_a_folder_with_a_checkpoint_unless_told(pretrained, finetuned, task, tmp_path):
    out = copy(finetuned, tmp_path)
    before = md5s(out, pretrained)
    r = call("finetune.py", *finetune_run(pretrained, out, task))
    one_message(r, "already holds a checkpoint", "--overwrite=True")
    assert md5s(out, pretrained) == before


# -----------------------------------------------------------------------------
# A fine-tuning run that diverges saves nothing and predicts nothing

@pytest.mark.parametrize("lr, examples_per_step, earlier_run", [
    (1e9, 64, False),  # one step: the loss it logs is finite, the weights are huge but finite, the outputs NaN
    (1e30, 16, True),  # the logged loss is NaN; the earlier run's checkpoint in out_dir stays
])
def test_finetune_that_diverges_saves_nothing(pretrained, finetuned, task, tmp_path, lr, examples_per_step, earlier_run):
    out = copy(finetuned, tmp_path) if earlier_run else tmp_path / "out"
    before = md5s(out)
    r = call("finetune.py", *finetune_run(pretrained, out, task, f"--learning_rate={lr}",
                                         f"--examples_per_step={examples_per_step}", "--overwrite=True"))
    one_message(r, "training diverged", "lower learning_rate",
                f"{out}/ckpt.pt is kept as it was" if earlier_run else "nothing was saved")
    assert "best so far" not in r.stdout
    if earlier_run:  # its checkpoint, predictions and log; this run's log is beside them
        assert {f: h for f, h in md5s(out).items() if f in before} == before
        assert (out / "log.jsonl.new").exists()
    else:
        assert not (out / "ckpt.pt").exists() and not (out / "predictions.tsv").exists()


# -----------------------------------------------------------------------------
# Settings that make no sense: rejected before any work, all problems in one message

@pytest.mark.parametrize("flag, words", [
    ("--batch_size=0", "batch_size must be at least 1, got 0"),
    ("--log_interval=0", "log_interval must be at least 1, got 0"),
    ("--dropout=2.0", "dropout must be in [0, 1), got 2.0"),
    ("--n_head=3", "n_embd=32 must be a multiple of n_head=3"),
    ("--device=tpu", "device must be one of auto, cpu, cuda, mps or cuda:N, got 'tpu'"),
    ("--data_dir=None", "'data_dir' must be str, got None"),
    ("--max_steps=0", "max_steps must be at least 1, got 0"),
    ("--max_steps=-5", "max_steps must be at least 1, got -5"),
    ("--eval_iters=0", "eval_iters must be at least 1, got 0"),
    ("--mask_prob=0", "mask_prob must be in (0, 1]"),
    ("--mask_prob=1.5", "mask_prob must be in (0, 1]"),
    ("--n_layer=0", "n_layer must be at least 1, got 0"),
    ("--decay=linaer", "decay must be one of linear, cosine, got 'linaer'"),
])
def test_train_rejects_nonsense_settings(data, tmp_path, flag, words):
    before = md5s(data)
    one_message(call("train.py", *tiny_run(data, tmp_path / "out", flag)), words)
    assert not (tmp_path / "out").exists() and md5s(data) == before


def test_train_reports_every_problem_at_once(data, tmp_path):
    message = one_message(run("train.py", *tiny_run(data, tmp_path / "out", "--batch_size=0", "--dropout=2.0",
                                                    "--decay=linaer")), "3 problems with the settings:")
    assert len(message.splitlines()) == 4 and "batch_size" in message and "dropout" in message and "decay" in message


def test_finetune_rejects_nonsense_settings(pretrained, task, tmp_path):
    one_message(run("finetune.py", *finetune_run(pretrained, tmp_path / "out", task, "--block_size=2")),
                "block_size must be at least 8")
    (tmp_path / "a_file").write_text("")  # a folder under a file: unwritable even for root
    one_message(call("finetune.py", *finetune_run(pretrained, tmp_path / "a_file" / "out", task)),
                f"{tmp_path / 'a_file'} is a file, not a folder; choose another out_dir")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_sample_rejects_a_negative_batch_size(pretrained):
    r = run("sample.py", f"--out_dir={pretrained}", "--text", "one [MASK]", "--batch_size=-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # argparse: its usage, then the one error
    assert r.stderr.strip().splitlines()[-1] == "sample.py: error: --batch_size must be at least 1"


# -----------------------------------------------------------------------------
# Damaged files

def not_json(d):
    (d / "meta.json").write_text("{not json")


def json_list(d):
    (d / "meta.json").write_text("[1, 2]")


def odd_sized_bin(d):
    with open(d / "train.bin", "ab") as f:
        f.write(b"\0")


def random_docs(d):
    (d / "train_docs.npy").write_bytes(np.random.default_rng(0).bytes(300))


def pickled_docs(d):
    np.save(d / "train_docs.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("damage, words", [
    (not_json, ["meta.json is unreadable", "re-run prepare.py"]),
    (json_list, ["meta.json is not prepare.py's", "re-run prepare.py"]),
    (odd_sized_bin, ["train.bin has an odd number of bytes", "re-run prepare.py"]),
    (random_docs, ["train_docs.npy is unreadable", "re-run prepare.py"]),
    (pickled_docs, ["train_docs.npy is unreadable", "re-run prepare.py"]),
])
def test_damaged_data(data, tmp_path, damage, words):
    d = copy(data, tmp_path, "data")
    damage(d)
    before = md5s(d)
    one_message(call("train.py", *tiny_run(d, tmp_path / "out")), *words)
    assert md5s(d) == before and not (tmp_path / "out").exists()


def test_checkpoint_from_the_other_tool(finetuned, data, tmp_path):
    out = copy(finetuned, tmp_path)
    before = md5s(out)
    one_message(call("train.py", *tiny_run(data, out, "--init_from=resume")),
                "is a finetuning checkpoint (finetune.py); this needs pretraining (train.py)")
    one_message(call("sample.py", f"--out_dir={out}", "--text", "one [MASK]"),
                "is a finetuning checkpoint (finetune.py); this needs pretraining (train.py)")
    assert md5s(out) == before


def test_zeroed_bytes_in_a_checkpoint(pretrained, data, tmp_path):
    out = copy(pretrained, tmp_path)
    with open(out / "ckpt.pt", "r+b") as f:
        f.seek(os.path.getsize(out / "ckpt.pt") // 2)  # in the tensors, which the zip container does not check
        f.write(bytes(64))
    before = md5s(out)
    one_message(run("sample.py", f"--out_dir={out}", "--text", "one [MASK]"), "is damaged", "Restore it from a copy")
    one_message(call("train.py", *tiny_run(data, out, "--init_from=resume", "--max_steps=4")), "is damaged")
    assert md5s(out) == before


FULL_DISK = """
import errno, runpy, sys, torch

def full_disk(obj, f):  # half a file, then the error
    with open(f, "wb") as out:
        out.write(b"half a checkpoint")
    raise {error}

torch.save = full_disk
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("error", [
    'OSError(errno.ENOSPC, "No space left on device")',
    'RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")',  # torch.save on a full tmpfs
])
def test_full_disk_during_a_save(pretrained, data, tmp_path, error):
    out = copy(pretrained, tmp_path)
    before = md5s(out / "ckpt.pt")
    r = subprocess.run([sys.executable, "-c", FULL_DISK.format(error=error), "train.py",
                        *tiny_run(data, out, "--init_from=resume", "--max_steps=4")],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    one_message(r, f"could not write {out}/ckpt.pt", "free on its disk", "the previous file is kept")
    assert md5s(out / "ckpt.pt") == before and not (out / "ckpt.pt.tmp").exists()


# -----------------------------------------------------------------------------
# Offline without the GPT-2 files; optional packages that are not installed

def test_offline_without_the_gpt2_files(pretrained, data, task, tmp_path):
    offline = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty")}
    os.makedirs(tmp_path / "empty")
    before = md5s(pretrained, data)
    for script, args in (("train.py", tiny_run(data, tmp_path / "out", "--whole_word_mask=True")),
                         ("finetune.py", finetune_run(pretrained, tmp_path / "out", task)),
                         ("sample.py", [f"--out_dir={pretrained}", "--text", "one [MASK]"])):
        t0 = time.time()
        one_message(run(script, *args, env=offline), "GPT-2", "TIKTOKEN_CACHE_DIR")
        assert time.time() - t0 < 60, f"{script} took {time.time() - t0:.0f} s to fail"
    assert sorted(os.listdir(tmp_path)) == ["empty"] and md5s(pretrained, data) == before


WITHOUT = "import runpy, sys; sys.modules[sys.argv[1]] = None; sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def run_without(module, script, *args):
    """script as if module were not installed: import fails and importlib.util.find_spec returns None."""
    return subprocess.run([sys.executable, "-c", WITHOUT, module, script, *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=180)


def test_missing_optional_packages(data, tmp_path):
    before = md5s(data)
    one_message(run_without("wandb", "train.py", *tiny_run(data, tmp_path / "out", "--wandb_log=True")),
                "wandb_log=True needs wandb: pip install wandb")
    one_message(run_without("transformers", "bench.py", "--compare_hf=True", "--steps=1", "--device=cpu"),
                "compare_hf=True needs transformers", "pip install transformers")
    assert not (tmp_path / "out").exists() and md5s(data) == before


# -----------------------------------------------------------------------------
# Ctrl-C

def start(script, *args, cwd=ROOT, ignore_sigint=False):
    log = open(os.path.join(cwd, f"{os.path.basename(script)}.stdout"), "w+")
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd, env=ENV,
                         stdout=log, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    return p, log


def wait_for(p, log, seen, timeout=120):
    """Wait until the process has printed a line for which seen(line) holds (and is still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log.seek(0)
        if any(seen(line) for line in log.read().splitlines()):
            return
        assert p.poll() is None, f"ended before it got there: {p.stderr.read()[-3000:]}"
        time.sleep(0.05)
    p.kill()
    raise AssertionError("it never got there")


def no_temporary_files(folder):
    assert not [n for _, _, names in os.walk(folder) for n in names if n.endswith(".tmp")]


@pytest.mark.slow
def test_ctrl_c_in_train_saves_and_stops_then_stops_at_once(data, tmp_path):
    out = tmp_path / "out"
    p, log = start("train.py", *tiny_run(data, out, "--max_steps=100000", "--eval_interval=100000"), cwd=tmp_path)
    wait_for(p, log, lambda line: line.startswith("step "))
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 130 and p.stderr.read() == ""  # not finished: `train.py && ...` stops here
    log.seek(0)
    stdout = log.read()
    assert "SIGINT: saving a checkpoint at the next log step" in stdout and "--init_from=resume" in stdout
    assert runtime.load_checkpoint(str(out))["step"] >= 1
    no_temporary_files(out)

    # a second Ctrl-C before the save: one line, nothing written. Also when the run was started in the
    # background by a script (`python train.py &`), which starts it with SIGINT ignored
    for ignored in (False, True):
        out2 = tmp_path / f"out-{ignored}"
        p, log = start("train.py", *tiny_run(data, out2, "--max_steps=100000", "--eval_interval=100000",
                                             "--log_interval=100000"), cwd=tmp_path, ignore_sigint=ignored)
        wait_for(p, log, lambda line: line.startswith("eval step 0"))
        p.send_signal(signal.SIGINT)
        wait_for(p, log, lambda line: line.startswith("SIGINT: saving"))
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 130 and p.stderr.read().strip() == "interrupted"
        assert os.listdir(out2) == ["log.jsonl"]


def test_ctrl_c_in_finetune(pretrained, task, tmp_path):
    out = tmp_path / "out"
    p, log = start("finetune.py", *finetune_run(pretrained, out, task, "--epochs=1000", "--log_interval=1"), cwd=tmp_path)
    wait_for(p, log, lambda line: line.startswith("epoch 3 "))
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130 and p.stderr.read().strip() == "interrupted"
    no_temporary_files(out)
    assert runtime.load_checkpoint(str(out))["kind"] == "finetuning"  # the best epoch so far, whole


@pytest.fixture
def only_out_tiny(pretrained, tmp_path):
    """A folder whose one checkpoint is out-tiny/ckpt.pt, as `python train.py config/bert_tiny.py` leaves it."""
    os.makedirs(tmp_path / "out-tiny")
    shutil.copy(pretrained / "ckpt.pt", tmp_path / "out-tiny" / "ckpt.pt")
    return tmp_path


def test_ctrl_c_in_sample(only_out_tiny):
    (only_out_tiny / "texts.txt").write_text("one two [MASK] four\n" * 20000)
    p, log = start("sample.py", "--file=texts.txt", "--batch_size=1", cwd=only_out_tiny)
    wait_for(p, log, lambda line: line.startswith("(reading out-tiny/ckpt.pt"))
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130 and p.stderr.read().strip() == "interrupted"
    assert sorted(os.listdir(only_out_tiny)) == ["out-tiny", "sample.py.stdout", "texts.txt"]


def test_sample_finds_the_one_checkpoint_here(only_out_tiny):
    r = run("sample.py", "--text", "one [MASK] three", cwd=only_out_tiny)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "(reading out-tiny/ckpt.pt, the one checkpoint here" in r.stdout and "[MASK] 1: " in r.stdout


def test_train_into_a_fine_tuned_folder_does_not_suggest_resuming_it(finetuned, data, tmp_path):
    out = copy(finetuned, tmp_path)
    before = md5s(out)
    message = one_message(call("train.py", *tiny_run(data, out, "--max_steps=2")), "already holds a fine-tuned checkpoint")
    assert "--init_from=resume" not in message and md5s(out) == before

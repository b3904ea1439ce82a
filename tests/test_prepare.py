"""prepare.py on small corpora made here: round trip, document index, split, determinism, bad input."""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts live at the top level, nanoGPT style

import prepare  # noqa: E402
from tokenizer import GPT2Tokenizer  # noqa: E402

EOT, CLS, SEP, MASK, PAD = GPT2Tokenizer.eot, GPT2Tokenizer.cls, GPT2Tokenizer.sep, GPT2Tokenizer.mask, GPT2Tokenizer.pad

OUTPUTS = ["train.bin", "val.bin", "train_docs.npy", "val_docs.npy", "meta.json"]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "naïve", "café", "日本語", "🙂", "<|endoftext|>", "[MASK]",
         "don't", "42", "\t", "\n", "x" * 40]


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer()


def make_doc(rng, i):
    # unique (so a document's position can be found), stripped, no blank line inside
    return (f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))).strip()


def write_paragraph_corpus(folder, n_files=3, docs_per_file=40, seed=0):
    """-> (documents in order, rows as datasets reads them). Files hold paragraphs with ragged blank
    lines and surrounding whitespace, plus whitespace-only paragraphs that must be skipped."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    docs, rows = [], []
    for f in range(n_files):
        parts = []
        for _ in range(docs_per_file):
            if rng.random() < 0.1:
                parts.append(" \t ")
                rows.append(" \t ")
            docs.append(make_doc(rng, len(docs)))
            parts.append(rng.choice(["", " ", "\n"]) + docs[-1] + rng.choice(["", "  ", "\t"]))
            rows.append(docs[-1])
        text = "".join(p + rng.choice(["\n\n", "\n\n\n\n"]) for p in parts)
        (folder / f"part{f:02d}.txt").write_text(text, encoding="utf-8")
    return docs, rows


def run(tmp_path, *argv, out="out", num_proc=1):
    out_dir = tmp_path / out
    prepare.main([*map(str, argv), "--out_dir", str(out_dir), "--num_proc", str(num_proc),
                  "--cache_dir", str(tmp_path / "hf_cache")])
    return out_dir


def read_split(out_dir, split, tok):
    """-> (tokens, offsets, decoded documents)"""
    data = np.memmap(out_dir / f"{split}.bin", dtype=np.uint16, mode="r")
    offs = np.load(out_dir / f"{split}_docs.npy")
    return data, offs, [tok.decode(data[a:b - 1]) for a, b in zip(offs[:-1], offs[1:])]


def check_index(data, offs):
    assert offs.dtype == np.int64 and offs[0] == 0 and offs[-1] == len(data)
    assert np.all(np.diff(offs) >= 2)  # at least one token, then EOT
    # EOT exactly at the end of every document and nowhere else (a literal "<|endoftext|>" is text)
    np.testing.assert_array_equal(np.flatnonzero(data == EOT), offs[1:] - 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus")
    docs, rows = write_paragraph_corpus(tmp / "txt")
    out = run(tmp, "--files", tmp / "txt" / "*.txt", "--val_fraction", 0.1)
    return tmp, out, docs, rows


def test_round_trip_and_document_index(corpus, tok):
    tmp, out, docs, rows = corpus
    is_val = prepare.held_out(range(len(rows)), 0.1)
    want = {"val": [r for r, v in zip(rows, is_val) if v and r.strip()],
            "train": [r for r, v in zip(rows, is_val) if not v and r.strip()]}
    for split in ("train", "val"):
        data, offs, got = read_split(out, split, tok)
        check_index(data, offs)
        assert got == want[split]
        assert tok.decode(data) == "".join(d + "<|endoftext|>" for d in want[split])


def test_split_keeps_documents_whole(corpus, tok):
    tmp, out, docs, rows = corpus
    where = {d: i for i, d in enumerate(docs)}
    train = [where[d] for d in read_split(out, "train", tok)[2]]
    val = [where[d] for d in read_split(out, "val", tok)[2]]
    assert sorted(train + val) == list(range(len(docs)))  # every document once, none cut or merged
    assert train == sorted(train) and val == sorted(val)  # corpus order kept
    assert len(val) == pytest.approx(0.1 * len(docs), abs=2)
    assert val[0] > 0 and val[-1] > len(docs) // 2  # spread over the corpus, not a block at one end


def test_meta(corpus):
    tmp, out, docs, rows = corpus
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50304 and meta["dtype"] == "uint16"
    assert meta["special_ids"] == dict(eot=EOT, cls=CLS, sep=SEP, mask=MASK, pad=PAD)
    for split in ("train", "val"):
        assert meta[f"{split}_tokens"] == os.path.getsize(out / f"{split}.bin") // 2
        assert meta[f"{split}_docs"] == len(np.load(out / f"{split}_docs.npy")) - 1
    assert meta["train_docs"] + meta["val_docs"] == len(docs)
    assert meta["empty_docs_skipped"] == sum(not r.strip() for r in rows) > 0
    assert meta["undecodable_bytes_replaced"] == 0
    src = meta["source"]
    assert src["files"] == [str(tmp / "txt" / "*.txt")] and src["document"] == "paragraph"
    assert src["n_files"] == 3 and src["val_fraction"] == 0.1 and src["val_split"] is None
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)  # no temporary or scratch files left


def test_deterministic_across_runs_and_processes(corpus):
    tmp, out, docs, rows = corpus
    # two more runs with 2 processes, the second with a fresh datasets cache
    a = run(tmp, "--files", tmp / "txt" / "*.txt", "--val_fraction", 0.1, out="again", num_proc=2)
    prepare.main(["--files", str(tmp / "txt" / "*.txt"), "--val_fraction", "0.1", "--num_proc", "2",
                  "--out_dir", str(tmp / "fresh"), "--cache_dir", str(tmp / "other_cache")])
    for f in OUTPUTS:
        assert (out / f).read_bytes() == (a / f).read_bytes() == (tmp / "fresh" / f).read_bytes(), f


def test_held_out():
    assert prepare.held_out(range(1000), 0.01).sum() == 10
    assert prepare.held_out(range(10), 0.0).sum() == 0 and prepare.held_out(range(10), 1.0).all()
    np.testing.assert_array_equal(prepare.held_out([3, 9, 19], 0.1), [False, True, True])


def test_jsonl(tmp_path, tok):
    lines = [{"text": "first line\n\nsame document", "id": 1}, {"text": None, "id": 2}, {"id": 3},
             {"text": "  <|endoftext|> stays text  ", "id": 4}, {"text": "naïve café 🙂", "id": 5},
             {"text": "   ", "id": 6}, {"text": "last", "id": 7}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = run(tmp_path, "--jsonl", tmp_path / "*.jsonl", "--val_fraction", 0.5)
    docs = [read_split(out, s, tok)[2] for s in ("train", "val")]
    # rows 1, 3, 5 are held out (every 2nd), of which 1 and 5 are empty; a blank line inside a value stays
    assert docs == [["first line\n\nsame document", "naïve café 🙂", "last"], ["<|endoftext|> stays text"]]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["empty_docs_skipped"] == 3 and meta["source"]["text_column"] == "text"


def test_dataset_with_own_validation_split(tmp_path, tok):
    # a dataset folder goes through the same load_dataset(name, config) call as a hub name
    folder = tmp_path / "Stories"
    folder.mkdir()
    split_docs = {"train": [f"train story {i}." for i in range(20)], "validation": ["val one.", "val two."]}
    for name, texts in split_docs.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"story": t}) + "\n" for t in texts))
    out = run(tmp_path, "--dataset", folder, "--text_column", "story")
    assert read_split(out, "train", tok)[2] == split_docs["train"]  # nothing held out of train
    assert read_split(out, "val", tok)[2] == split_docs["validation"]
    src = json.loads((out / "meta.json").read_text())["source"]
    assert src["val_split"] == "validation" and src["val_fraction"] is None


def test_doc_per_file(tmp_path, tok):
    (tmp_path / "txt").mkdir()
    texts = ["chapter one\n\nwith two paragraphs", "second file", "third\n\n\nfile"]
    for i, t in enumerate(texts):
        (tmp_path / "txt" / f"{i}.txt").write_text(t + "\n")
    out = run(tmp_path, "--files", tmp_path / "txt" / "*.txt", "--doc_per_file", "--val_fraction", 0.34)
    assert read_split(out, "train", tok)[2] + read_split(out, "val", tok)[2] == [texts[0], texts[1], texts[2]]
    assert read_split(out, "val", tok)[2] == [texts[2]]


def test_default_out_dir():
    assert prepare.parse_args([]).dataset == "roneneldan/TinyStories"
    assert prepare.parse_args([]).out_dir == os.path.join("data", "tinystories")  # config/bert_tiny.py
    assert prepare.parse_args(["--files", "Corpus/**/*.txt"]).out_dir == os.path.join("data", "corpus")
    assert prepare.parse_args(["--jsonl", "dump/wiki.jsonl"]).out_dir == os.path.join("data", "wiki")


# ----------------------------------------------------------------------------- bad input

def test_missing_path(tmp_path):
    with pytest.raises(SystemExit, match="no files match"):
        run(tmp_path, "--files", tmp_path / "nowhere" / "*.txt")
    (tmp_path / "texts").mkdir()
    with pytest.raises(SystemExit, match=r"texts' is a folder: name its files, e.g. --files \".*texts/\*.txt\""):
        run(tmp_path, "--files", tmp_path / "texts")
    with pytest.raises(SystemExit, match="could not load"):
        run(tmp_path, "--dataset", tmp_path / "no_such_dataset")


def test_empty_corpus(tmp_path):
    (tmp_path / "zero.txt").write_text("")
    with pytest.raises(SystemExit, match="empty corpus"):
        run(tmp_path, "--files", tmp_path / "zero.txt")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n\n\n\n \n")
    with pytest.raises(SystemExit, match="empty corpus"):
        run(tmp_path, "--files", tmp_path / "blank.txt")
    assert not (tmp_path / "out" / "train.bin").exists()


def test_empty_file_among_others(tmp_path, tok):
    # datasets, converting a file per process, fails on one with no rows; prepare.py leaves it out
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree\n")
    (tmp_path / "b.txt").write_text("")
    out = run(tmp_path, "--files", tmp_path / "*.txt", "--val_fraction", 0.34, num_proc=2)
    assert read_split(out, "train", tok)[2] + read_split(out, "val", tok)[2] == ["one", "two", "three"]
    assert json.loads((out / "meta.json").read_text())["source"]["n_files"] == 2


def test_dataset_that_is_a_file(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one\n")
    with pytest.raises(SystemExit):
        run(tmp_path, "--dataset", tmp_path / "a.txt")
    assert "a.txt is a file: pass it with --files (plain text) or --jsonl" in capsys.readouterr().err


def test_too_few_documents_for_a_split(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree\n")
    with pytest.raises(SystemExit, match="no val documents.*raise --val_fraction"):
        run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.01)


def test_missing_or_wrong_column(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"body": "hello", "n": 1}\n{"body": "world", "n": 2}\n')
    with pytest.raises(SystemExit, match=r"no column 'text'.*\['body', 'n'\].*--text_column"):
        run(tmp_path, "--jsonl", tmp_path / "a.jsonl")
    with pytest.raises(SystemExit, match="column 'n' holds .*not text"):
        run(tmp_path, "--jsonl", tmp_path / "a.jsonl", "--text_column", "n")


def test_malformed_json(tmp_path, capfd):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"text": "broken"\n')
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n')
    with pytest.raises(SystemExit, match=r"could not load .*a\.jsonl line 2 is not JSON \(Expecting ','"):
        run(tmp_path, "--jsonl", tmp_path / "*.jsonl")
    assert "Failed to load JSON" not in capfd.readouterr().err  # datasets' own report of it is not repeated
    (tmp_path / "blank.jsonl").write_text("\n\n \n")
    with pytest.raises(SystemExit, match="empty corpus: .*blank.jsonl holds no document"):
        run(tmp_path, "--jsonl", tmp_path / "blank.jsonl")


@pytest.mark.parametrize("kind", ["files", "jsonl"])
def test_undecodable_bytes_are_replaced_and_counted(tmp_path, tok, kind, capsys):
    # 0xff and 0xfe are never UTF-8; 0xe2 0x82 is a cut-off 3-byte character: 4 bad bytes, 3 replacements
    bad = b"caf\xff \xfe ok \xe2\x82 end"
    if kind == "files":
        (tmp_path / "a.txt").write_bytes(b"good one\n\n" + bad + b"\n\ngood two\n")
    else:
        (tmp_path / "a.txt").write_bytes(b'{"text": "good one"}\n{"text": "' + bad + b'"}\n{"text": "good two"}\n')
    out = run(tmp_path, f"--{kind}", tmp_path / "a.txt", "--val_fraction", 0.34)
    docs = read_split(out, "train", tok)[2] + read_split(out, "val", tok)[2]
    assert docs == ["good one", "caf\ufffd \ufffd ok \ufffd end", "good two"]
    assert json.loads((out / "meta.json").read_text())["undecodable_bytes_replaced"] == 4
    assert "replaced 4 undecodable bytes" in capsys.readouterr().out


def test_refuses_to_overwrite_bins(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree\n")
    out = run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34)
    before = (out / "train.bin").read_bytes()
    (tmp_path / "a.txt").write_text("uno\n\ndos\n\ntres\n")
    with pytest.raises(SystemExit, match="already holds prepared data.*--overwrite"):
        run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34)
    assert (out / "train.bin").read_bytes() == before
    run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34, "--overwrite")
    assert (out / "train.bin").read_bytes() != before


def test_interrupted_run_leaves_no_bins(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree\n")
    real_write_bins = prepare.write_bins

    def write_then_die(*args, **kwargs):
        real_write_bins(*args, **kwargs)  # the temporary files are complete here
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "write_bins", write_then_die)
    with pytest.raises(SystemExit, match="interrupted; .*out is left as it was"):
        run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34)
    assert not (tmp_path / "out").exists()  # the folder it made, with no train.bin, no temporary or scratch file
    # over an earlier run: the old files stay as they were
    monkeypatch.setattr(prepare, "write_bins", real_write_bins)
    out = run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34)
    before = {f: (out / f).read_bytes() for f in OUTPUTS}
    monkeypatch.setattr(prepare, "write_bins", write_then_die)
    (tmp_path / "a.txt").write_text("uno\n\ndos\n\ntres\n")
    with pytest.raises(SystemExit, match="interrupted"):
        run(tmp_path, "--files", tmp_path / "a.txt", "--val_fraction", 0.34, "--overwrite")
    assert {f: (out / f).read_bytes() for f in sorted(os.listdir(out))} == before


def test_hub_unreachable_is_one_message(tmp_path):
    # the real command line, offline: one line saying what to check, no traceback
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([sys.executable, "prepare.py", "--out_dir", str(tmp_path / "out"),
                        "--cache_dir", str(tmp_path / "hf_cache")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "could not load roneneldan/TinyStories" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the command line, bad input
# One message on stderr, no traceback, and the files of an earlier run left as they were

def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(**extra):
    """The environment without a network: proxies that refuse every connection, none bypassed."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    proxy = f"http://127.0.0.1:{closed_port()}"
    return {**env, "HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, **extra}


def cli(*argv, env=None, **kwargs):
    return subprocess.run([sys.executable, "prepare.py", *map(str, argv)], cwd=ROOT, env=env or os.environ,
                          capture_output=True, text=True, timeout=60, **kwargs)


def md5s(folder):
    return {str(f.relative_to(folder)): hashlib.md5(f.read_bytes()).hexdigest()
            for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def one_message(stdout, stderr, returncode):
    """The one line on stderr that is not a progress bar, after checking there is no traceback."""
    assert returncode == 1 and "Traceback" not in stdout + stderr, stderr
    # a progress bar that was cut short ends without a newline when stderr is not a terminal
    lines = [s for s in re.split(r"[\r\n]|(?<=/s\])", stderr) if s.strip() and not re.search(r"/s\]\s*$", s)]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def earlier_run(corpus, tmp_path):
    """A copy of a good output folder, and its md5s."""
    out = shutil.copytree(corpus[1], tmp_path / "earlier")
    return out, md5s(out)


def test_offline_without_the_gpt2_files(tmp_path, corpus, earlier_run):
    # tiktoken fails once, in the main process, before any tokenizer process starts
    (tmp_path / "empty").mkdir()
    t0 = time.time()
    r = cli("--files", corpus[0] / "txt" / "*.txt", "--out_dir", earlier_run[0], "--overwrite", "--num_proc", 2,
            env=offline_env(TIKTOKEN_CACHE_DIR=str(tmp_path / "empty")))
    assert time.time() - t0 < 20
    msg = one_message(r.stdout, r.stderr, r.returncode)
    assert msg.startswith("tiktoken cannot load the GPT-2 encoding") and "TIKTOKEN_CACHE_DIR" in msg
    assert md5s(earlier_run[0]) == earlier_run[1]


def test_hub_unreachable_fails_fast(tmp_path):
    # without HF_HUB_OFFLINE, huggingface_hub retries every request for ~25 s; HF_ENDPOINT here refuses at once
    env = offline_env(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(k, None)
    t0 = time.time()
    r = cli("--out_dir", tmp_path / "out", "--cache_dir", tmp_path / "hf_cache", env=env)
    assert time.time() - t0 < 15
    msg = one_message(r.stdout, r.stderr, r.returncode)
    assert re.search(r"could not load roneneldan/TinyStories: .*the hub is unreachable .*Offline\? .*--files", msg)
    assert not (tmp_path / "out").exists()


def ctrl_c_while_tokenizing(tmp_path, earlier_run, code="import prepare; prepare.main()"):
    """Run prepare.py (as `code`) over 2 x 50,000 paragraphs in two tokenizer processes, press Ctrl-C once
    they have done some of the work, and check what is left: the one message, the earlier run's files
    untouched, no scratch file and no process. Returns the seconds from the Ctrl-C to the exit."""
    (tmp_path / "big").mkdir()
    paragraphs = "\n\n".join(f"story {i}: " + " ".join(WORDS[:12] * 3) for i in range(500)) + "\n\n"
    for f in range(2):
        (tmp_path / "big" / f"{f}.txt").write_text(paragraphs * 100)  # 2 x 50,000 paragraphs, 2 x 11 MB
    args = ["--files", str(tmp_path / "big" / "*.txt"), "--out_dir", str(earlier_run[0]), "--overwrite",
            "--num_proc", "2", "--cache_dir", str(tmp_path / "hf_cache")]
    p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)  # a group, as in a terminal
    err = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: p.stderr.read(1), "")))
    reader.start()
    try:
        t0 = time.time()  # wait until the two tokenizer processes have done some of the work, not all
        while not any(0 < int(n) < 100_000 for n in re.findall(r"tokenizing .*?\| *(\d+)/100000 ", "".join(err))):
            assert time.time() - t0 < 60 and p.poll() is None, "".join(err)
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C does: every process in the group gets it
        t1 = time.time()
        p.wait(timeout=60)
        seconds = time.time() - t1
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    reader.join(10)  # a process left running would hold the pipe open: fail, not hang
    if reader.is_alive():
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError("a process of the interrupted run is still running, with its stderr open")
    stdout = p.stdout.read()  # a line or two: the pipe never filled up
    assert one_message(stdout, "".join(err), p.returncode) == f"interrupted; {earlier_run[0]} is left as it was"
    assert md5s(earlier_run[0]) == earlier_run[1]  # no scratch file left, the earlier run's files untouched
    for _ in range(100):  # and no tokenizer process left running
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("a process of the interrupted run is still running")
    return seconds


def test_ctrl_c_while_tokenizing(tmp_path, earlier_run):
    ctrl_c_while_tokenizing(tmp_path, earlier_run)


def test_ctrl_c_with_a_pool_that_never_winds_down(tmp_path, earlier_run):
    # datasets' pool, once in a while, never returned from terminate() after a Ctrl-C: here it never does.
    # As in the real hang, terminate() first stops the thread that replaces dead workers; the workers go
    # on, and prepare.py still ends, with the same message and no process left, after its grace period
    stuck = ("import time, multiprocess.pool as mp, prepare\n"
             "def terminate(pool):\n"
             "    pool._worker_handler._state = mp.TERMINATE\n"
             "    pool._change_notifier.put(None)\n"
             "    pool._worker_handler.join()\n"
             "    time.sleep(3600)\n"
             "def tokenize(*args, tokenize=prepare.tokenize):\n"
             "    mp.Pool.terminate = terminate\n"
             "    return tokenize(*args)\n"
             "prepare.tokenize, prepare.CTRL_C_GRACE_S = tokenize, 2\n"
             "prepare.main()")
    assert ctrl_c_while_tokenizing(tmp_path, earlier_run, stuck) >= 2


@pytest.mark.parametrize("where", ["afile", "afile/sub"])
def test_out_dir_is_a_file(tmp_path, where):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree\n")
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(SystemExit, match=r"--out_dir .*afile.*afile is a file, not a folder"):
        run(tmp_path, "--files", tmp_path / "a.txt", out=where)


@pytest.mark.parametrize("head", [b"\x1f\x8b\x08\x00", b"\xff\xfeo\x00n\x00e\x00", b"\x7fELF\x02\x01\x01\x00"])
def test_binary_compressed_or_utf16_file(tmp_path, head):
    (tmp_path / "good.txt").write_text("one\n\ntwo\n")
    (tmp_path / "bad.txt").write_bytes(head + b"more bytes\n\n")
    with pytest.raises(SystemExit, match=r"bad\.txt is not UTF-8 text \(it holds NUL bytes\)"):
        run(tmp_path, "--files", tmp_path / "*.txt")
    assert not (tmp_path / "out").exists()


def test_full_or_read_only_disk(tmp_path, corpus):
    # a tmpfs of its own, in a mount namespace of its own, so nothing needs cleaning up
    mnt = tmp_path / "disk"
    mnt.mkdir()
    (tmp_path / "big.txt").write_text(("word " * 1000 + "\n\n") * 500)  # 500,000 tokens, 1 MB of .bin
    small, big = corpus[0] / "txt" / "*.txt", tmp_path / "big.txt"
    args = f"--num_proc 2 --cache_dir {tmp_path / 'hf_cache'} --out_dir {mnt / 'out'}"
    script = f"""
        mount -t tmpfs -o size=256k tmpfs {mnt} || exit 99
        cp -r {corpus[1]} {mnt}/out && md5sum {mnt}/out/* > {tmp_path}/before.md5
        {sys.executable} prepare.py --files {big} --overwrite {args} > {tmp_path}/full.out 2> {tmp_path}/full.err
        echo $? > {tmp_path}/full.rc
        ls -A {mnt}/out > {tmp_path}/ls.txt; md5sum {mnt}/out/* > {tmp_path}/after.md5
        mount -o remount,ro {mnt}
        {sys.executable} prepare.py --files '{small}' --overwrite {args} > {tmp_path}/ro.out 2> {tmp_path}/ro.err
        echo $? > {tmp_path}/ro.rc
    """
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if r.returncode == 99 or (r.returncode and "unshare" in r.stderr):
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    msg = one_message(read("full.out"), read("full.err"), int(read("full.rc")))
    assert re.fullmatch(r"could not write .*out: No space left on device.*; it is left as it was: free some space.*",
                        msg)
    assert read("after.md5") == read("before.md5") and read("ls.txt").split() == sorted(OUTPUTS)
    msg = one_message(read("ro.out"), read("ro.err"), int(read("ro.rc")))
    assert re.fullmatch(r"could not write .*out: Read-only file system.*; it is left as it was", msg)

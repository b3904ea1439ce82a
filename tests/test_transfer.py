"""Pretraining has to transfer: at toy scale, through train.py's and finetune.py's real code; and
experiments/transfer.py, the experiment at full scale, reports what it measured and nothing picked on test.

The toy corpus has topics: every document draws its words from one of 4 disjoint word lists. The task
is the topic, and its labelled training rows use only the first half of each list, its validation
rows only the second half. A linear probe of a random encoder cannot get past chance on val: those
words' embeddings are random and unrelated to the ones the probe was trained on. An encoder that
MLM-pretrained on the corpus has learnt which words go together, so its probe reads the topic of
words the labels never showed it. Broken masking or a broken MLM loss leaves it at chance too.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import finetune
import runtime
import train
from model import BertConfig, BertForPreTraining
from tokenizer import GPT2Tokenizer

EOT, CLS, SEP, MASK, PAD = GPT2Tokenizer.eot, GPT2Tokenizer.cls, GPT2Tokenizer.sep, GPT2Tokenizer.mask, GPT2Tokenizer.pad
N_TEXT, VOCAB_SIZE = GPT2Tokenizer.eot, 50304

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))  # a folder of scripts, not a package
import transfer  # noqa: E402
import transfer_data  # noqa: E402

TOPICS, WORDS, DOC_WORDS = 4, 16, (12, 24)
PRETRAIN = ["--device=cpu", "--compile=False", "--nsp=False", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--max_positions=64", "--block_size=32", "--batch_size=16", "--tokens_per_step=512",
            "--learning_rate=5e-3", "--warmup_steps=20", "--max_steps=600", "--dropout=0.0", "--init_std=0.1",
            "--eval_iters=4", "--eval_interval=1000", "--log_interval=1000"]
PROBE = ["--device=cpu", "--compile=False", "--freeze_encoder=True", "--learning_rate=1e-2", "--epochs=8",
         "--examples_per_step=32", "--block_size=32", "--log_interval=1000", "--task=topics", "--pooling=mean"]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds synchronisation
    yield
    torch.set_num_threads(n)


def topic_words():
    """TOPICS lists of WORDS GPT-2 tokens, each a lowercase word with its leading space, that encode
    back to themselves in running text."""
    tok = GPT2Tokenizer()
    words = []
    for i in range(5000, 30000):
        s = tok.enc.decode([i])
        if s[:1] == " " and s[1:].isalpha() and s[1:].islower() and len(s) > 4 and tok.encode(s) == [i]:
            words.append(i)
        if len(words) == TOPICS * WORDS:
            break
    return np.array(words).reshape(TOPICS, WORDS)


def docs(words, n, rng, columns=slice(None)):
    out = []
    for _ in range(n):
        t = rng.integers(TOPICS)
        out.append((t, rng.choice(words[t, columns], rng.integers(*DOC_WORDS))))
    return out


def write_corpus(folder, splits):
    for split, ds in splits.items():
        tokens = np.concatenate([np.append(d.astype(np.uint16), np.uint16(EOT)) for _, d in ds])
        tokens.tofile(os.path.join(folder, f"{split}.bin"))
        np.save(os.path.join(folder, f"{split}_docs.npy"), np.cumsum([0] + [len(d) + 1 for _, d in ds]).astype(np.int64))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(dict(tokenizer="gpt2", vocab_size=VOCAB_SIZE, dtype="uint16",
                       special_ids=dict(eot=EOT, cls=CLS, sep=SEP, mask=MASK, pad=PAD)), f)


def write_task(path, ds):
    dec = GPT2Tokenizer().enc.decode
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([dec(d.tolist()).strip(), f"topic{t}"] for t, d in ds)
    return str(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    rng = np.random.default_rng(0)
    words = topic_words()
    write_corpus(root, {"train": docs(words, 3000, rng), "val": docs(words, 100, rng)})
    half = WORDS // 2
    files = [f"--train_file={write_task(root / 'train.csv', docs(words, 256, rng, slice(None, half)))}",
             f"--val_file={write_task(root / 'val.csv', docs(words, 256, rng, slice(half, None)))}"]
    return root, files


def probe(init_from, out_dir, files):
    return finetune.main([*PROBE, f"--init_from={init_from}", f"--out_dir={out_dir}", *files])["best"]


def pretrain_and_probe(root, files, name, *flags):
    out = root / name
    train.main([*PRETRAIN, f"--data_dir={root}", f"--out_dir={out}", *flags])
    return probe(out, root / f"{name}-probe", files)


@pytest.mark.slow
def test_pretraining_transfers_to_words_the_labels_never_showed(toy):
    root, files = toy
    pretrained_acc = pretrain_and_probe(root, files, "pretrained")
    random_init = transfer.random_init(str(root / "pretrained"), str(root / "random"))  # the experiment's own
    random_acc = probe(random_init, root / "random-probe", files)
    assert random_acc < 0.45, random_acc              # 4 classes: chance is 0.25
    assert pretrained_acc > random_acc + 0.3, (pretrained_acc, random_acc)


@pytest.mark.slow
def test_broken_masking_does_not_transfer(toy, monkeypatch):
    """The test above has teeth: MLM labels that are not the masked tokens teach nothing to transfer."""
    root, files = toy
    mask_tokens = train.mask_tokens

    def shuffled_labels(idx, rng, *args, **kwargs):
        inputs, labels = mask_tokens(idx, rng, *args, **kwargs)
        chosen = labels != -100
        labels[chosen] = rng.permutation(labels[chosen])  # right positions, wrong tokens
        return inputs, labels
    monkeypatch.setattr(train, "mask_tokens", shuffled_labels)
    assert pretrain_and_probe(root, files, "broken") < 0.45


# -----------------------------------------------------------------------------
# experiments/transfer.py, without its Debian corpus or a real pretraining run

def write_toy_task(out, labels=("x", "x", "y", "y"), files=("f1", "f1", "f2", "f2")):
    task = out / "task"
    task.mkdir(parents=True)
    for split in ("train", "val", "test"):
        with open(task / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("text", "label", "file")] + [(f"row {i}", l, n) for i, (l, n) in enumerate(zip(labels, files))])


def test_experiment_picks_each_inits_learning_rate_on_val(tmp_path, capsys):
    """For each init and mode, the learning rate with the best mean val accuracy over seeds, and the test
    accuracy of those runs: never a rate picked on test. The gap on test is between those runs too."""
    runs = [  # (init, lr, seed, val, test): pretrained is best on val at 3e-4, random init at 1e-3; test says the opposite
        ("pretrained", 3e-4, 1, 0.60, 0.50), ("pretrained", 3e-4, 2, 0.62, 0.52),
        ("pretrained", 1e-3, 1, 0.55, 0.70), ("pretrained", 1e-3, 2, 0.55, 0.70),
        ("random init", 3e-4, 1, 0.40, 0.90), ("random init", 3e-4, 2, 0.40, 0.90),
        ("random init", 1e-3, 1, 0.45, 0.30), ("random init", 1e-3, 2, 0.47, 0.34)]
    results = [dict(init=i, mode="full fine-tuning", lr=lr, seed=s, val=v, test=t) for i, lr, s, v, t in runs]
    for r in results:
        picked = (r["init"], r["lr"]) in (("pretrained", 3e-4), ("random init", 1e-3))
        r["test_correct"] = ([1, 1, 1, 1] if r["init"] == "pretrained" else [0, 0, 1, 1]) if picked else [0, 1, 0, 0]
    picked = transfer.picked_runs(results)
    assert {k: {r["lr"] for r in rs} for k, rs in picked.items()} == {
        ("pretrained", "full fine-tuning"): {3e-4}, ("random init", "full fine-tuning"): {1e-3}}
    assert np.mean([r["test"] for r in picked["random init", "full fine-tuning"]]) == pytest.approx(0.32)
    gap, se = transfer.pretrained_gaps(picked, ["f1", "f1", "f2", "f2"])["full fine-tuning"]
    assert gap == 0.5 and se > 0

    write_toy_task(tmp_path)  # and the table says so
    transfer.print_table(results, str(tmp_path / "baselines.json"), str(tmp_path), str(tmp_path / "task" / "test.csv"))
    out = capsys.readouterr().out
    assert "0.510" in out and "0.320" in out and "+0.500" in out
    assert "0.700" not in out and "0.900" not in out


def test_gap_standard_error_resamples_files_not_rows():
    """Paragraphs of one file are alike: when whole files are right or wrong together, the gap between
    two models is far less certain than as many independent rows would make it."""
    rng = np.random.default_rng(0)
    files = np.repeat(np.arange(40), 25)  # 40 files of 25 rows
    a = np.repeat(rng.random(40) < 0.6, 25).astype(float)  # right or wrong file by file
    b = np.zeros(1000)
    gap, se = transfer.gap_and_se(a, b, files)
    assert gap == a.mean()
    assert 0.06 < se < 0.10  # about sqrt(0.24 / 40): 40 draws, not 1,000
    _, se_rows = transfer.gap_and_se(a, b, np.arange(1000))  # every row its own file
    assert 0.01 < se_rows < 0.02  # about sqrt(0.24 / 1000)
    assert transfer.gap_and_se(a, a, files) == (0.0, 0.0)


def test_unigram_baseline_counts_text_tokens_only(tmp_path):
    """EOT separates documents and is never masked: the baseline guesses among text tokens."""
    np.array([EOT, 5, 5, 7, EOT, EOT, EOT], np.uint16).tofile(tmp_path / "val.bin")
    np.array([5, 7, 7, 7, EOT, N_TEXT - 1], np.uint16).tofile(tmp_path / "train.bin")
    (tmp_path / "meta.json").write_text('{"tokenizer": "gpt2"}')  # the vocabulary the bins were made with
    u = transfer.unigram_mlm(str(tmp_path / "train.bin"), str(tmp_path / "val.bin"))
    assert u["token"] == 5 and u["acc"] == pytest.approx(2 / 3)
    freq = np.full(N_TEXT, 0.5)
    freq[[5, 7, N_TEXT - 1]] += [1, 3, 1]
    assert u["loss"] == pytest.approx(-np.mean(np.log(freq[[5, 5, 7]] / freq.sum())))


def test_each_command_without_its_inputs_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # a machine without scikit-learn: import sklearn fails
    out = tmp_path / "data"
    monkeypatch.setattr(transfer_data, "KERNEL_DOCS", str(tmp_path / "no-docs"))
    with pytest.raises(SystemExit, match="apt-get install linux-doc-6.1"):
        transfer.main(["data", f"--out={out}"])
    assert not out.exists()
    with pytest.raises(SystemExit, match="make the task first with `python experiments/transfer.py data"):
        transfer.main(["baselines", f"--out={out}"])
    write_toy_task(out)
    with pytest.raises(SystemExit, match="make them first with `python prepare.py"):
        transfer.main(["baselines", f"--out={out}"])
    (out / "bins").mkdir()
    for split in ("train", "val"):
        np.array([1, 2, EOT], np.uint16).tofile(out / "bins" / f"{split}.bin")
    with pytest.raises(SystemExit, match="pip install scikit-learn"):
        transfer.main(["baselines", f"--out={out}"])
    with pytest.raises(SystemExit, match="results.json .*`transfer.py finetune`"):
        transfer.main(["table", f"--out={out}", f"--init_from={tmp_path / 'run'}"])
    for bad in ("--dtype=fp32", "--pooling=max"):  # stopped before the random init is written
        with pytest.raises(SystemExit):
            transfer.main(["finetune", f"--out={out}", f"--init_from={tmp_path / 'run'}", bad])
    assert "dtype must be one of auto, float32" in capsys.readouterr().err
    assert not (out / "runs").exists()
    (out / "runs" / "run").mkdir(parents=True)
    (out / "runs" / "run" / "results.json").write_text('[{"init": "pretr')  # cut short
    with pytest.raises(SystemExit, match="cannot read .*results.json"):
        transfer.main(["table", f"--out={out}", f"--init_from={tmp_path / 'run'}"])


def test_baselines_without_scikit_learn_on_the_command_line(tmp_path):
    """The one case run as a command: one line that says what to install, no traceback."""
    write_toy_task(tmp_path / "data")
    (tmp_path / "data" / "bins").mkdir()
    for split in ("train", "val"):
        np.array([1, 2, EOT], np.uint16).tofile(tmp_path / "data" / "bins" / f"{split}.bin")
    (tmp_path / "no-sklearn" / "sklearn").mkdir(parents=True)  # whether or not it is installed here
    (tmp_path / "no-sklearn" / "sklearn" / "__init__.py").write_text("raise ImportError('no scikit-learn')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "no-sklearn"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "transfer.py"), "baselines",
                        f"--out={tmp_path / 'data'}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install scikit-learn" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_finetune_reads_what_a_real_finetune_run_writes(tmp_path):
    """transfer.py and finetune.py agree on flags, log.jsonl and predictions.tsv: one real run, 2 epochs."""
    write_toy_task(tmp_path / "data", labels=["x", "y"] * 8, files=["f1"] * 8 + ["f2"] * 8)
    torch.manual_seed(0)
    config = BertConfig(max_positions=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    (tmp_path / "tiny").mkdir()
    runtime.save_checkpoint(dict(kind="pretraining", model=BertForPreTraining(config).state_dict(), model_config=vars(config),
                                 step=0, config=dict(seed=1), tokenizer="gpt2"), str(tmp_path / "tiny" / "ckpt.pt"))
    transfer.main(["finetune", f"--out={tmp_path / 'data'}", f"--init_from={tmp_path / 'tiny'}", "--no_random", "--mode=full",
                   "--seeds", "1", "--lr", "1e-3", "--epochs=2", "--dtype=float32",
                   "--extra=--examples_per_step=8", "--extra=--block_size=16"])
    with open(tmp_path / "data" / "runs" / "tiny" / "results.json") as f:
        [r] = json.load(f)
    assert len(r["curve"]) == 2 and r["val"] == max(r["curve"]) and len(r["test_correct"]) == 16
    assert r["test"] == np.mean(r["test_correct"])


def test_lpft_starts_each_full_run_from_its_seeds_probe_and_reruns_nothing_done(tmp_path, monkeypatch):
    """--lpft: full fine-tuning of seed s starts from seed s's linear probe (its trained head), so the
    probes run first. A run whose folder holds the result of the same command is not run again; one
    that ran with other settings is replaced. A run's numbers come from its log.jsonl and predictions.tsv."""
    write_toy_task(tmp_path / "data")
    calls = []

    def fake_finetune(cmd, log_path):
        calls.append(flags := dict(a[2:].split("=", 1) for a in cmd[2:]))
        with open(os.path.join(flags["out_dir"], "log.jsonl"), "w") as f:
            for record in ({"step": 1, "epoch": 1, "loss": 2.0}, {"step": 1, "epoch": 1, "val_accuracy": 0.75},
                           {"step": 2, "epoch": 2, "val_accuracy": 0.5, "val_f1": 0.4}):
                f.write(json.dumps(record) + "\n")
        with open(os.path.join(flags["out_dir"], "predictions.tsv"), "w") as f:
            f.write("index\tprediction\n0\tx\n1\tx\n2\tx\n3\ty\n")
        with open(os.path.join(flags["init_from"], "ckpt.pt")) as f:
            start = f.read()
        with open(os.path.join(flags["out_dir"], "ckpt.pt"), "w") as f:  # what the full runs start from:
            f.write(start + " + head")                                   # other weights in, another file out
        return 1.0
    monkeypatch.setattr(transfer, "run", fake_finetune)
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "ckpt.pt").write_text("weights")
    argv = ["finetune", f"--out={tmp_path / 'data'}", f"--init_from={tmp_path / 'pretrained'}", "--no_random",
            "--lpft", "--mode=full", "--seeds", "1", "2", "--lr", "3e-4", "1e-3"]
    transfer.main(argv)
    probes = {c["seed"]: c for c in calls if c["freeze_encoder"] == "True"}
    full = [c for c in calls if c["freeze_encoder"] == "False"]
    assert sorted(probes) == ["1", "2"] and len(full) == 4
    assert calls.index(probes["2"]) < calls.index(full[0])
    assert all(probes[c["seed"]]["init_from"] == str(tmp_path / "pretrained") for c in full)
    assert all(c["init_from"] == probes[c["seed"]]["out_dir"] for c in full)
    with open(tmp_path / "data" / "runs" / "pretrained" / "results.json") as f:
        r = json.load(f)[0]
    assert (r["val"], r["last_val"], r["curve"]) == (0.75, 0.5, [0.75, 0.5])
    assert r["test_correct"] == [1, 1, 0, 1] and r["test"] == 0.75

    calls.clear()
    transfer.main(argv)
    assert calls == []
    transfer.main(argv + ["--epochs=3"])  # another command: those runs are run again
    assert len(calls) == 4 and all(c["epochs"] == "3" and c["overwrite"] == "True" for c in calls)
    calls.clear()  # a retrained checkpoint under the same name, even of the same size and time (a copy that
    ckpt = tmp_path / "pretrained" / "ckpt.pt"  # kept its time): its probes again, and the runs that start from them
    t = ckpt.stat().st_mtime_ns
    ckpt.write_text("weightz")
    os.utime(ckpt, ns=(t, t))
    transfer.main(argv)
    assert sum(c["freeze_encoder"] == "True" for c in calls) == 2 and len(calls) == 6
    calls.clear()  # a result cut short is run again; the runs that start from it are kept, as it wrote the same weights
    with open(os.path.join(probes["1"]["out_dir"], "result.json"), "w") as f:
        f.write('{"val": 0.')
    transfer.main(argv)
    assert [c["seed"] for c in calls] == ["1"]
    with pytest.raises(SystemExit, match="no ckpt.pt in .*nowhere: --init_from is a pretraining run's out_dir"):
        transfer.main(argv[:2] + [f"--init_from={tmp_path / 'nowhere'}"] + argv[3:])

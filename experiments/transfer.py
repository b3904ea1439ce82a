"""
Does our pretraining transfer? (issue 14) One end-to-end experiment on text that ships with Debian:
pretrain on the Linux kernel's documentation (plus the Python docs and man pages 2, 5, 7), then classify
held-out kernel-doc paragraphs by their top-level Documentation/ folder with a few hundred labels
per class, from our checkpoint and from a random init, fully fine-tuned and as a linear probe.

    python experiments/transfer.py data        # corpus text + task CSVs under data/transfer/
    python prepare.py --files "data/transfer/corpus/*.txt" --out_dir data/transfer/bins
    python train.py config/bert_transfer.py    # -> out-transfer/: 30-48 min on 2 cores with bf16 in hardware, 2 h without
    # without bf16 in hardware, 2 x 128 for 8,000 float32 steps (68 min on 2 AVX2 cores), the run that gained the most:
    python train.py config/bert_transfer.py --n_layer=2 --n_head=2 --n_embd=128 --init_std=0.05 --learning_rate=2e-3 \
        --warmup_steps=100 --max_steps=8000 --eval_interval=2000 --out_dir=out-tiny-fp32-8k
    python experiments/transfer.py baselines   # majority class, bag of words, unigram MLM
    python experiments/transfer.py finetune --init_from=out-transfer   # the table, 3 seeds: 18 runs of 1.4-4.2 min each
    python experiments/transfer.py baselines --train_rows=50           # the same with 50 labels a class
    python experiments/transfer.py finetune --init_from=out-transfer --train_rows=50 --epochs=16 --mode=full
    python experiments/transfer.py finetune --init_from=out-transfer --lpft --mode=full --work=data/transfer/runs/lpft

Needs the Debian packages linux-doc-6.1 (the kernel docs), python3.11-doc, manpages and manpages-dev.
scikit-learn is a dependency of this experiment only (the bag-of-words baseline), not of nanoBERT.

Leakage: the task is split by *file* (train / val / test files per class), and the val and test
files are left out of the pretraining corpus altogether, so neither a paragraph nor a near-copy of
it from the same file is seen in pretraining.
"""
import argparse
import csv
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # model.py and runtime.py, for the random-init checkpoint
KERNEL_DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
PYTHON_DOCS = "/usr/share/doc/python3.11-doc/html/_sources"
MAN_PAGES = "/usr/share/man/man[257]/*"  # system calls, file formats, overviews (manpages, manpages-dev)
# top-level Documentation/ folders that become the classes: large, and about different things
CLASSES = ("admin-guide", "core-api", "driver-api", "filesystems", "networking", "process", "trace", "userspace-api")
SKIP = ("translations",)             # not English
SPLIT_SEED = 14                      # the file split and the row sampling
FILE_SHARES = (0.5, 0.25, 0.25)       # train / val / test files of each class
ROWS = {"train": 200, "val": 100, "test": 240}  # per class: 1,600 / 800 / 1,920 rows. As many as the held-out
# files allow (trace's val files hold 103 prose paragraphs, core-api's test files 241): at 80 a class,
# val and test disagreed by up to 5 points on the same runs

# -----------------------------------------------------------------------------
# Text

DECORATION = re.compile(r"^\s*([=\-~^*+#`:.'\"_])\1{2,}\s*$")  # reST heading underlines and rules


def clean(text, keep_indent=False):
    """reST with its decoration lines and licence tags removed, and every run of spaces made one space.
    GPT-2's BPE has no token for a run of spaces: an indentation of 8 is 7 tokens ' ' and then the
    word, so with indentation kept 44% of this corpus's tokens were ' ', and a model that always
    guesses ' ' had 44% masked-token accuracy."""
    lines = [l.rstrip() if keep_indent else " ".join(l.split()) for l in text.replace("\t", "    ").splitlines()]
    lines = [l for l in lines if not DECORATION.match(l) and not l.startswith(".. SPDX-License")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def paragraphs(text):
    return [p for p in text.split("\n\n") if p.strip()]


def one_line(p):
    """A paragraph as one line, every run of white space one space: the task's text, and the form in
    which copies of a paragraph are found."""
    return " ".join(p.split())


def is_prose(p):
    """A paragraph worth labelling: running text of 20-200 words, not code, a table, a list of
    fields or a directive."""
    lines = p.splitlines()
    if lines[0][:1].isspace() or not lines[0][:1].isalpha() or p.lstrip().startswith(".."):
        return False
    if p.count("|") >= 2 or any(l.lstrip().startswith(("+-", "+=", "..", ">>>", "$ ", "#")) for l in lines):
        return False
    words = p.split()
    letters = sum(c.isalpha() for c in p) / max(1, sum(not c.isspace() for c in p))
    return 20 <= len(words) <= 200 and letters > 0.75


def kernel_files():
    files = sorted(glob.glob(f"{KERNEL_DOCS}/**/*.rst.gz", recursive=True) +
                   glob.glob(f"{KERNEL_DOCS}/**/*.txt.gz", recursive=True))
    return [f for f in files if os.path.relpath(f, KERNEL_DOCS).split(os.sep)[0] not in SKIP]


def read_gz(path):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def top_folder(path):
    return os.path.relpath(path, KERNEL_DOCS).split(os.sep)[0]


# -----------------------------------------------------------------------------
# data: the corpus text files and the task CSVs

def build_data(out):
    missing = [pkg for pkg, found in (("linux-doc-6.1", os.path.isdir(KERNEL_DOCS)), ("python3.11-doc", os.path.isdir(PYTHON_DOCS)),
                                      ("manpages manpages-dev", bool(glob.glob(MAN_PAGES)))) if not found]
    if missing:
        raise SystemExit(f"the corpus text is not on this machine: apt-get install {' '.join(missing)}")
    rng = np.random.default_rng(SPLIT_SEED)
    files = kernel_files()
    texts = {f: clean(read_gz(f), keep_indent=True) for f in files}  # indentation tells prose from code
    split_of = {}  # a file of a class -> train / val / test
    for c in CLASSES:
        mine = [f for f in files if top_folder(f) == c]
        mine = [mine[i] for i in rng.permutation(len(mine))]
        n_train, n_val = int(FILE_SHARES[0] * len(mine)), int(FILE_SHARES[1] * len(mine))
        for i, f in enumerate(mine):
            split_of[f] = "train" if i < n_train else "val" if i < n_train + n_val else "test"

    # the task: prose paragraphs of each class's files, the same number from every class, each class
    # and split sampled by its own generator, so a change to one split's size leaves the others' rows
    # alone. A val or test paragraph must not also stand in a file that pretraining reads: some text is
    # copied between files (29 of the test rows were, licence and boilerplate paragraphs among them)
    seen = {one_line(p) for f in files if split_of.get(f, "train") == "train" for p in paragraphs(texts[f])}
    rows = {s: [] for s in ROWS}
    for ci, c in enumerate(CLASSES):
        for si, (s, n) in enumerate(ROWS.items()):
            pool = [(p, f) for f in files if split_of.get(f) == s and top_folder(f) == c
                    for p in paragraphs(texts[f]) if is_prose(p) and (s == "train" or one_line(p) not in seen)]
            if len(pool) < n:
                raise SystemExit(f"class {c} has only {len(pool)} {s} paragraphs, {n} wanted")
            pick = np.random.default_rng([SPLIT_SEED, ci, si]).choice(len(pool), n, replace=False)
            rows[s] += [dict(text=one_line(pool[i][0]), label=c, file=os.path.relpath(pool[i][1], KERNEL_DOCS))
                        for i in sorted(pick)]
    os.makedirs(os.path.join(out, "task"), exist_ok=True)
    for s, r in rows.items():
        r = [r[i] for i in rng.permutation(len(r))]
        with open(os.path.join(out, "task", f"{s}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label", "file"])
            w.writeheader()
            w.writerows(r)

    # the corpus: every kernel doc except the task's val and test files, and the Python docs
    held_out = {f for f, s in split_of.items() if s != "train"}
    os.makedirs(os.path.join(out, "corpus"), exist_ok=True)
    with open(os.path.join(out, "corpus", "kernel.txt"), "w") as fk:
        for f in files:
            if f not in held_out and texts[f]:
                fk.write(clean(texts[f]) + "\n\n")
    py = sorted(glob.glob(f"{PYTHON_DOCS}/**/*.rst.txt", recursive=True))
    with open(os.path.join(out, "corpus", "python.txt"), "w") as fp:
        for f in py:
            with open(f, encoding="utf-8", errors="replace") as fi:
                t = clean(fi.read())
            if t:
                fp.write(t + "\n\n")
    from concurrent.futures import ThreadPoolExecutor
    man = sorted(f for f in glob.glob(MAN_PAGES) if not os.path.islink(f))
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool, open(os.path.join(out, "corpus", "man.txt"), "w") as fm:
        for t in pool.map(render_man, man):
            if len(t.split()) > 50:  # not a stub that only points at another page
                fm.write(t + "\n\n")
    info = dict(classes=CLASSES, rows={s: len(r) for s, r in rows.items()},
                files={s: sum(v == s for v in split_of.values()) for s in ROWS},
                corpus_files=dict(kernel=len(files) - len(held_out), python=len(py), man=len(man)),
                held_out_files=sorted(os.path.relpath(f, KERNEL_DOCS) for f in held_out))
    with open(os.path.join(out, "task", "info.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(f"task: {len(CLASSES)} classes, rows {info['rows']}, from files {info['files']}")
    print(f"corpus: {info['corpus_files']['kernel']} kernel docs (the task's {len(held_out)} val/test files left out) "
          f"+ {len(py)} Python docs + {len(man)} man pages -> {out}/corpus")
    print(f'next: python prepare.py --files "{out}/corpus/*.txt" --out_dir {out}/bins')


def render_man(path):
    """A man page as plain text (man from man-db, no justification or hyphenation), '' for a stub."""
    env = dict(os.environ, MANWIDTH="2000", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "--nj", "--nh", "-l", path], capture_output=True, text=True, env=env, errors="replace")
    return clean("\n".join(r.stdout.splitlines()[1:-1]))  # without the header and footer lines


# -----------------------------------------------------------------------------
# baselines: the majority class and bag of words on the task, the unigram guess for masked tokens

def read_task(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def baselines(out, rows_per_class=0):
    from sklearn.feature_extraction.text import TfidfVectorizer  # this experiment's only extra dependency
    from sklearn.linear_model import LogisticRegression
    (xtr, ytr), (xva, yva), (xte, yte) = map(read_task, (train_file(out, rows_per_class), f"{out}/task/val.csv", f"{out}/task/test.csv"))
    bins = [os.path.join(out, "bins", f"{s}.bin") for s in ("train", "val")]
    if not all(map(os.path.isfile, bins)):
        raise SystemExit(f"no {bins[0]} or {bins[1]}: make them first with "
                         f"`python prepare.py --files \"{out}/corpus/*.txt\" --out_dir {out}/bins`")
    result = {}
    major = max(set(ytr), key=ytr.count)
    result["majority"] = dict(val=np.mean(np.array(yva) == major), test=np.mean(np.array(yte) == major))
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    Xtr, Xva, Xte = vec.fit_transform(xtr), vec.transform(xva), vec.transform(xte)
    best = None
    for C in (0.1, 0.3, 1, 3, 10, 30, 100):  # the regularisation picked on val, as the fine-tuning picks its epoch
        clf = LogisticRegression(C=C, max_iter=2000).fit(Xtr, ytr)
        acc = np.mean(clf.predict(Xva) == np.array(yva))
        if best is None or acc > best[0]:
            best = (acc, C, np.mean(clf.predict(Xte) == np.array(yte)))
    result["bag of words"] = dict(val=best[0], test=best[2], C=best[1])
    # the unigram baseline of masked-token accuracy: always guess the most frequent text token of val.bin
    # (train.py masks text tokens uniformly, so this is the share of that token among masked positions)
    # and its loss: the cross-entropy of val.bin's tokens under train.bin's token frequencies, which is
    # what a model that ignores the context can reach (the "unigram plateau")
    val = np.fromfile(bins[1], dtype=np.uint16)
    val = val[val < 50256]  # text ids; EOT is never masked
    counts = np.bincount(val)
    freq = np.bincount(np.fromfile(bins[0], dtype=np.uint16), minlength=50256)[:50256] + 0.5
    loss = -np.log(freq[val] / freq.sum()).mean()
    result["unigram mlm"] = dict(acc=counts.max() / len(val), token=int(counts.argmax()), loss=loss)
    with open(baselines_file(out, rows_per_class), "w") as f:
        json.dump({k: {kk: float(vv) for kk, vv in v.items()} for k, v in result.items()}, f, indent=1)
    print(f"majority class: val {result['majority']['val']:.3f}, test {result['majority']['test']:.3f}")
    print(f"bag of words (TF-IDF 1-2 grams + logistic regression, C={best[1]}): val {best[0]:.3f}, test {best[2]:.3f}")
    print(f"unigram MLM baseline: always guessing token {counts.argmax()} ({repr_token(int(counts.argmax()))}) "
          f"is right on {result['unigram mlm']['acc']:.1%} of val.bin's text tokens; train.bin's token frequencies "
          f"give val.bin a loss of {loss:.3f}")
    return result


def repr_token(i):
    import tiktoken
    return repr(tiktoken.get_encoding("gpt2").decode([i]))


# -----------------------------------------------------------------------------
# finetune: seeds x {pretrained, random init} x {full fine-tuning, linear probe}

def run(cmd, log_path):
    """Run a command, its output to log_path; stop with the log's tail if it fails."""
    t0 = time.time()
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        with open(log_path) as f:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{f.read()[-2000:]}")
    with open(log_path) as f:
        return f.read(), time.time() - t0


def random_init(init_from, out_dir):
    """The weights the pretraining started from: train.py's init (the same config, the same seed)."""
    import torch
    import runtime
    from model import BertConfig, BertForPreTraining
    ckpt = runtime.load_checkpoint(init_from)
    torch.manual_seed(ckpt["config"]["seed"])  # as train.py does before it builds the model
    model = BertForPreTraining(BertConfig(**ckpt["model_config"]))
    os.makedirs(out_dir, exist_ok=True)
    runtime.save_checkpoint(dict(kind="pretraining", model=model.state_dict(), model_config=ckpt["model_config"],
                                 step=0, config=ckpt["config"], tokenizer=ckpt["tokenizer"]),
                            os.path.join(out_dir, "ckpt.pt"))


def finetune_one(init_from, out_dir, out, train_csv, seed, probe, lr, args):
    """One finetune.py run, or the result it left in out_dir when it ran with the same command and inputs."""
    epochs = args.probe_epochs if probe else args.epochs
    cmd = [sys.executable, "finetune.py", f"--init_from={init_from}", f"--out_dir={out_dir}", "--task=kernel_docs",
           f"--train_file={train_csv}", f"--val_file={out}/task/val.csv", f"--test_file={out}/task/test.csv",
           f"--learning_rate={lr}", f"--epochs={epochs}", f"--seed={seed}", f"--freeze_encoder={probe}",
           f"--pooling={args.pooling}", f"--dtype={args.dtype}", "--compile=False", "--log_interval=1000", *args.extra]
    import runtime
    # a run is known by its command and the contents of its checkpoint and CSVs (not their times: train_file
    # writes its subset anew each time, and a copy can keep a time): a retrained checkpoint or rebuilt task
    # under the same names makes it run again. The work folder is this script's: a run is reused or replaced
    files = [os.path.join(init_from, "ckpt.pt"), train_csv, f"{out}/task/val.csv", f"{out}/task/test.csv"]
    key = dict(cmd=cmd[1:], sha256=[sha256(f) for f in files])
    done = os.path.join(out_dir, "result.json")
    try:
        with open(done) as f:
            r = json.load(f)
        if r.get("key") == key:
            return r
    except (OSError, ValueError):  # not run yet, or cut short: run it
        pass
    os.makedirs(out_dir, exist_ok=True)
    text, seconds = run(cmd + ["--overwrite=True"], os.path.join(out_dir, "finetune.log"))
    vals = [float(v) for v in re.findall(r"^epoch \d+ val accuracy ([0-9.]+)", text, re.M)]
    with open(os.path.join(out_dir, "predictions.tsv")) as f:
        pred = [line.rstrip("\n").split("\t")[1] for line in f][1:]
    correct = np.array(pred) == np.array(read_task(f"{out}/task/test.csv")[1])
    r = dict(val=max(vals), last_val=vals[-1], test=float(correct.mean()), curve=vals, seconds=seconds,
             test_correct=correct.astype(int).tolist(), key=key)
    runtime.write_bytes(done, json.dumps(r).encode())
    return r


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def gap_and_se(a, b, files, n=4000, seed=0):
    """The gap a - b between two accuracies on the same test rows (a, b: each row's score, 0 or 1, or
    its mean over seeds) and its standard error when the test *files* are resampled with replacement.
    Paragraphs of one file are alike, so the rows are not independent draws: the files are the sample."""
    d, files = np.asarray(a, float) - np.asarray(b, float), np.asarray(files)
    _, which = np.unique(files, return_inverse=True)
    sums, sizes = np.bincount(which, d), np.bincount(which)
    picks = np.random.default_rng(seed).integers(0, len(sums), (n, len(sums)))
    return d.mean(), float((sums[picks].sum(1) / sizes[picks].sum(1)).std())


def train_file(out, rows_per_class):
    """task/train.csv, or the first rows_per_class rows of each class of it (the labels-scarce setting):
    a fixed subset, the same for every seed and init, written anew from train.csv each time."""
    if not os.path.isfile(f"{out}/task/train.csv"):
        raise SystemExit(f"no {out}/task/train.csv: make the task first with `python experiments/transfer.py data --out={out}`")
    if not rows_per_class:
        return f"{out}/task/train.csv"
    with open(f"{out}/task/train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    counts, keep = {}, []
    for r in rows:  # train.csv is in random order, so its first rows of a class are a random sample
        counts[r["label"]] = counts.get(r["label"], 0) + 1
        if counts[r["label"]] <= rows_per_class:
            keep.append(r)
    if min(counts.values()) < rows_per_class:
        raise SystemExit(f"--train_rows={rows_per_class}: train.csv has {min(counts.values())} rows of its smallest class")
    path = f"{out}/task/train-{rows_per_class}.csv"
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    os.replace(path + ".tmp", path)
    return path


def baselines_file(out, rows_per_class):
    return os.path.join(out, f"baselines-{rows_per_class}.json" if rows_per_class else "baselines.json")


def work_dir(out, args):
    name = os.path.basename(os.path.normpath(args.init_from)) + (f"-{args.train_rows}rows" if args.train_rows else "")
    return args.work or os.path.join(out, "runs", name)


def finetune(out, args):
    import runtime
    train_csv = train_file(out, args.train_rows)  # before any run, so a bad --train_rows stops at once
    if not os.path.isfile(os.path.join(args.init_from, "ckpt.pt")):
        raise SystemExit(f"no ckpt.pt in {args.init_from}: --init_from is a pretraining run's out_dir "
                         "(`python train.py config/bert_transfer.py` makes out-transfer)")
    work = work_dir(out, args)
    os.makedirs(work, exist_ok=True)
    inits = {"pretrained": args.init_from}
    if not args.no_random:
        inits["random init"] = os.path.join(work, "random-init")
        ckpt, pretrained = os.path.join(inits["random init"], "ckpt.pt"), os.path.join(args.init_from, "ckpt.pt")
        if not os.path.isfile(ckpt) or os.stat(ckpt).st_mtime_ns < os.stat(pretrained).st_mtime_ns:
            random_init(args.init_from, inits["random init"])  # missing, or older than a retrained checkpoint
    modes = {"both": [False, True], "probe": [True], "full": [False]}[args.mode]
    if args.lpft and False in modes:
        modes = [True, False]  # the probes first: full fine-tuning starts from them
    results = []
    for name, path in inits.items():
        probes = {}  # seed -> the run folder of that seed's linear probe, at the probe lr picked on val
        for probe in modes:
            lrs = args.probe_lr if probe else args.lr
            runs = []
            for lr, seed in ((lr, seed) for lr in lrs for seed in args.seeds):
                mode = "linear probe" if probe else "probe, then full fine-tuning" if args.lpft else "full fine-tuning"
                tag = f"{name.replace(' ', '-')}-{'probe' if probe else 'lpft' if args.lpft else 'full'}" \
                      f"{f'-lr{short(lr)}' if len(lrs) > 1 else ''}-{seed}"
                start = path if probe or not args.lpft else probes[seed]
                r = finetune_one(start, os.path.join(work, tag), out, train_csv, seed, probe, lr, args)
                r.update(init=name, mode=mode, seed=seed, lr=lr, dir=os.path.join(work, tag))
                print(f"{tag}: best val {r['val']:.3f} (epochs {' '.join(f'{v:.3f}' for v in r['curve'])}), "
                      f"test {r['test']:.3f}, {r['seconds']:.0f}s", flush=True)
                runs.append(r)
            if probe:
                best = best_lr(runs)
                probes = {r["seed"]: r["dir"] for r in runs if r["lr"] == best}
            results += runs
    runtime.write_bytes(os.path.join(work, "results.json"), json.dumps(results, indent=1).encode())
    print_table(results, baselines_file(out, args.train_rows), args.init_from, f"{out}/task/test.csv")


def best_lr(runs):
    """The learning rate of runs (one init and mode) with the best mean val accuracy over the seeds."""
    lrs = sorted({r["lr"] for r in runs})
    return max(lrs, key=lambda lr: np.mean([r["val"] for r in runs if r["lr"] == lr]))


def short(lr):
    return f"{lr:.0e}".replace("e-0", "e-")  # 0.0003 -> 3e-4


def print_table(results, baselines_path, init_from, test_csv=None):
    def cell(v):
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
    print(f"\n| model | mode | lr | val accuracy (best epoch) | test accuracy (that epoch) | seeds |"
          f"\n|---|---|---|---|---|---|")
    picked = {}  # (init, mode) -> the runs at the learning rate picked on val
    for init in dict.fromkeys(r["init"] for r in results):
        for mode in dict.fromkeys(r["mode"] for r in results):
            rs = [r for r in results if r["init"] == init and r["mode"] == mode]
            if not rs:
                continue
            # every init and mode gets its own best learning rate, by mean val accuracy over the seeds
            lrs, best = sorted({r["lr"] for r in rs}), best_lr(rs)
            grid = f" (best on val of {', '.join(map(short, lrs))})" if len(lrs) > 1 else ""
            rs = picked[init, mode] = [r for r in rs if r["lr"] == best]
            print(f"| {init} | {mode} | {short(best)}{grid} | {cell([r['val'] for r in rs])} | {cell([r['test'] for r in rs])} | "
                  f"{' '.join(str(r['seed']) for r in rs)} |")
    if os.path.isfile(baselines_path):
        with open(baselines_path) as f:
            b = json.load(f)
        print(f"| majority class | - | - | {b['majority']['val']:.3f} | {b['majority']['test']:.3f} | - |")
        print(f"| bag of words (TF-IDF + LR) | - | - | {b['bag of words']['val']:.3f} | {b['bag of words']['test']:.3f} | - |")
    log = os.path.join(init_from, "log.jsonl")
    if os.path.isfile(log):
        with open(log) as f:
            evals = [json.loads(l) for l in f if '"val_mlm_loss"' in l]
        if evals:
            e = evals[-1]
            unigram = (f" (unigram baseline: loss {b['unigram mlm']['loss']:.3f}, accuracy {b['unigram mlm']['acc']:.1%})"
                       if os.path.isfile(baselines_path) else "")
            print(f"\npretraining ({init_from}) at step {e['step']}: val MLM loss {e['val_mlm_loss']:.3f}, "
                  f"val masked-token accuracy {e['val_mlm_acc']:.1%}{unigram}")
    print("(± is the standard deviation over seeds)")
    if test_csv and os.path.isfile(test_csv):
        with open(test_csv, newline="") as f:
            files = [r["file"] for r in csv.DictReader(f)]
        for mode in dict.fromkeys(r["mode"] for r in results):
            a, b = picked.get(("pretrained", mode)), picked.get(("random init", mode))
            if a and b and all(len(r.get("test_correct", ())) == len(files) for r in a + b):
                gap, se = gap_and_se(np.mean([r["test_correct"] for r in a], 0), np.mean([r["test_correct"] for r in b], 0), files)
                print(f"{mode}, pretrained - random init on test: {gap:+.3f} ± {se:.3f} (standard error over the "
                      f"{len(set(files))} test files, resampled; seeds averaged)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["data", "baselines", "finetune", "table"])
    p.add_argument("--out", default=os.path.join(ROOT, "data", "transfer"), help="where the data goes")
    p.add_argument("--init_from", default="out-transfer", help="finetune: the pretraining run's out_dir")
    p.add_argument("--work", default="", help="finetune: where the runs go (default <out>/runs/<init_from's name>); a run finished there with the same settings and inputs is reused, any other replaced")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--mode", choices=["both", "full", "probe"], default="both")
    p.add_argument("--no_random", action="store_true", help="skip the random-init runs")
    p.add_argument("--lpft", action="store_true", help="full fine-tuning starts from the linear probe of the same init and "
                   "seed (its trained head) instead of a random head (Kumar et al. 2022, LP-FT)")
    p.add_argument("--pooling", default="mean", choices=["cls", "mean"], help="finetune.py's pooling: mean measured better than cls here")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-4, 1e-3], help="full fine-tuning learning rates: each init and mode keeps the one best on val")
    p.add_argument("--epochs", type=int, default=8, help="full fine-tuning epochs")
    p.add_argument("--probe_lr", type=float, nargs="+", default=[3e-3], help="linear probe learning rates, likewise")
    p.add_argument("--probe_epochs", type=int, default=20, help="linear probe epochs")
    p.add_argument("--dtype", default="auto", help="finetune.py's dtype: auto is bf16 on a CPU with bf16 in hardware, else float32")
    p.add_argument("--train_rows", type=int, default=0, help="finetune: labelled rows per class (0: all of train.csv, 200)")
    p.add_argument("--extra", nargs="*", default=[], help="more finetune.py flags, e.g. --extra=--dropout=0.0")
    args = p.parse_args(argv)
    if args.train_rows < 0 or min(args.lr + args.probe_lr) <= 0 or min(args.epochs, args.probe_epochs) < 1:
        p.error("--train_rows must be >= 0, learning rates > 0 and epochs >= 1")
    if args.command == "data":
        build_data(args.out)
    elif args.command == "baselines":
        baselines(args.out, args.train_rows)
    elif args.command == "finetune":
        import runtime  # torch, which the other commands do without
        if problem := runtime.check_dtype(args.dtype):  # before the random init is written or any run starts
            p.error(problem)
        finetune(args.out, args)
    else:
        path = os.path.join(work_dir(args.out, args), "results.json")
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot read {path} ({e}): `transfer.py finetune` with the same --init_from, --train_rows "
                             f"and --work writes it")
        print_table(results, baselines_file(args.out, args.train_rows), args.init_from, f"{args.out}/task/test.csv")


if __name__ == "__main__":
    main()

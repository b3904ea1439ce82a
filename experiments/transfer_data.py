"""
The data of experiments/transfer.py, from text that ships with Debian: a pretraining corpus (the Linux
kernel's documentation, the Python docs, man pages 2, 5 and 7) and a task, prose paragraphs of the
kernel docs labelled with their top-level Documentation/ folder. `python experiments/transfer.py data`
writes both under data/transfer/:

    corpus/kernel.txt, python.txt, man.txt    for prepare.py
    task/train.csv, val.csv, test.csv         text, label, file; info.json says what went where

Leakage: the task is split by *file* (train / val / test files per class), and the val and test
files are left out of the pretraining corpus altogether, so neither a paragraph nor a near-copy of
it from the same file is seen in pretraining.
"""
import csv
import glob
import gzip
import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np

KERNEL_DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"  # linux-doc-6.1
PYTHON_DOCS = "/usr/share/doc/python3.11-doc/html/_sources"  # python3.11-doc
MAN_PAGES = "/usr/share/man/man[257]/*"  # system calls, file formats, overviews (manpages, manpages-dev)
# top-level Documentation/ folders that become the classes: large, and about different things
CLASSES = ("admin-guide", "core-api", "driver-api", "filesystems", "networking", "process", "trace", "userspace-api")
SKIP = ("translations",)             # not English
SPLIT_SEED = 14                      # the file split and the row sampling
FILE_SHARES = (0.5, 0.25, 0.25)      # train / val / test files of each class
ROWS = {"train": 200, "val": 100, "test": 240}  # per class: as many as the held-out files allow (trace's val
# files hold 103 prose paragraphs, core-api's test files 241); at 80 a class, val and test disagreed by up
# to 5 points on the same runs

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
    return [f for f in files if top_folder(f) not in SKIP]


def top_folder(path):
    return os.path.relpath(path, KERNEL_DOCS).split(os.sep)[0]


def read_gz(path):
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def render_man(path):
    """A man page as plain text (man from man-db, no justification or hyphenation)."""
    env = dict(os.environ, MANWIDTH="2000", LC_ALL="C.UTF-8")
    r = subprocess.run(["man", "--nj", "--nh", "-l", path], capture_output=True, text=True, env=env, errors="replace")
    return clean("\n".join(r.stdout.splitlines()[1:-1]))  # without the header and footer lines


# -----------------------------------------------------------------------------
# The task's CSV files

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path, rows):
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(path + ".tmp", path)


def train_file(out, rows_per_class):
    """task/train.csv, or the first rows_per_class rows of each class of it (the labels-scarce setting):
    a fixed subset, the same for every seed and init, written anew from train.csv each time."""
    if not os.path.isfile(f"{out}/task/train.csv"):
        raise SystemExit(f"no {out}/task/train.csv: make the task first with `python experiments/transfer.py data --out={out}`")
    if not rows_per_class:
        return f"{out}/task/train.csv"
    counts, keep = {}, []
    for r in read_csv(f"{out}/task/train.csv"):  # in random order, so its first rows of a class are a random sample
        counts[r["label"]] = counts.get(r["label"], 0) + 1
        if counts[r["label"]] <= rows_per_class:
            keep.append(r)
    if min(counts.values()) < rows_per_class:
        raise SystemExit(f"--train_rows={rows_per_class}: train.csv has {min(counts.values())} rows of its smallest class")
    path = f"{out}/task/train-{rows_per_class}.csv"
    write_csv(path, keep)
    return path


# -----------------------------------------------------------------------------
# The corpus text files and the task CSVs

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
    # alone. A val or test paragraph must not also stand in a file that pretraining reads: licence and
    # boilerplate paragraphs are copied between files
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
        write_csv(os.path.join(out, "task", f"{s}.csv"), [r[i] for i in rng.permutation(len(r))])

    # the corpus: every kernel doc except the task's val and test files, the Python docs, the man pages
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

"""
Does our pretraining transfer? One end-to-end experiment on text that ships with Debian: pretrain on
the Linux kernel's documentation (plus the Python docs and man pages 2, 5, 7), then classify held-out
kernel-doc paragraphs by their top-level Documentation/ folder with a few hundred labels per class,
from our checkpoint and from a random init, fully fine-tuned and as a linear probe.

    python experiments/transfer.py data        # corpus text + task CSVs under data/transfer/ (transfer_data.py)
    python prepare.py --files "data/transfer/corpus/*.txt" --out_dir data/transfer/bins   # GPT-2's vocabulary
    python prepare.py --files "data/transfer/corpus/*.txt" --vocab_size=8192 --out_dir data/transfer/bins-8k
    python train.py config/bert_transfer.py    # -> out-transfer/, on bins-8k
    python experiments/transfer.py baselines   # majority class, bag of words, unigram MLM
    python experiments/transfer.py finetune --init_from=out-transfer   # the runs and the table
    python experiments/transfer.py table --init_from=out-transfer      # the table again, from the runs' results
    python experiments/transfer.py baselines --train_rows=50           # the same with 50 labels a class
    python experiments/transfer.py finetune --init_from=out-transfer --train_rows=50 --epochs=16 --mode=full
    python experiments/transfer.py finetune --init_from=out-transfer --lpft --mode=full --work=data/transfer/runs/lpft

The table is 3 seeds x {pretrained, random init} x {full fine-tuning at 2 learning rates, linear probe}:
18 finetune.py runs of a few minutes each on a CPU, so a run whose folder holds the result of the same
command on the same inputs is not run again.

Needs the Debian packages linux-doc-6.1, python3.11-doc, manpages and manpages-dev, and for the
bag-of-words baseline scikit-learn, which nanoBERT itself does not need.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the shared modules: runtime, model, tokenizer
import runtime  # noqa: E402
from model import BertConfig, BertForPreTraining  # noqa: E402
import tokenizer as tokenization  # noqa: E402
from transfer_data import build_data, read_csv, train_file  # noqa: E402

MODES = {"full": "full fine-tuning", "probe": "linear probe", "lpft": "probe, then full fine-tuning"}

# -----------------------------------------------------------------------------
# baselines: the majority class and bag of words on the task, the unigram guess for masked tokens

def baselines(out, rows_per_class=0):
    csvs = train_file(out, rows_per_class), f"{out}/task/val.csv", f"{out}/task/test.csv"
    bins = [os.path.join(out, "bins", f"{s}.bin") for s in ("train", "val")]
    if not all(map(os.path.isfile, bins)):
        raise SystemExit(f"no {bins[0]} or {bins[1]}: make them first with "
                         f"`python prepare.py --files \"{out}/corpus/*.txt\" --out_dir {out}/bins`")
    try:  # the bag-of-words baseline only: not a requirement of nanoBERT
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise SystemExit("the baselines need scikit-learn (for bag of words): pip install scikit-learn") from None
    (xtr, ytr), (xva, yva), (xte, yte) = [([r["text"] for r in rows], np.array([r["label"] for r in rows]))
                                          for rows in map(read_csv, csvs)]
    result = {}
    labels, counts = np.unique(ytr, return_counts=True)
    major = labels[counts.argmax()]
    result["majority"] = dict(val=np.mean(yva == major), test=np.mean(yte == major))
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    Xtr, Xva, Xte = vec.fit_transform(xtr), vec.transform(xva), vec.transform(xte)
    best = None
    for C in (0.1, 0.3, 1, 3, 10, 30, 100):  # the regularisation picked on val, as the fine-tuning picks its epoch
        clf = LogisticRegression(C=C, max_iter=2000).fit(Xtr, ytr)
        acc = np.mean(clf.predict(Xva) == yva)
        if best is None or acc > best[0]:
            best = (acc, C, np.mean(clf.predict(Xte) == yte))
    result["bag of words"] = dict(val=best[0], test=best[2], C=best[1])
    result["unigram mlm"] = u = unigram_mlm(*bins)
    with open(baselines_file(out, rows_per_class), "w") as f:
        json.dump({k: {kk: vv if isinstance(vv, str) else float(vv) for kk, vv in v.items()} for k, v in result.items()}, f, indent=1)
    print(f"majority class: val {result['majority']['val']:.3f}, test {result['majority']['test']:.3f}")
    print(f"bag of words (TF-IDF 1-2 grams + logistic regression, C={best[1]}): val {best[0]:.3f}, test {best[2]:.3f}")
    print(f"unigram MLM baseline: always guessing token {u['token']} ({u['text']!r}) "
          f"is right on {u['acc']:.1%} of val.bin's text tokens; train.bin's token frequencies give val.bin a loss "
          f"of {u['loss']:.3f}")
    return result


def unigram_mlm(train_bin, val_bin):
    """What a model that ignores the context can reach on val.bin's masked tokens: the accuracy of always
    guessing its most frequent text token (train.py masks text tokens uniformly, so that is the token's
    share of the masked positions), and the loss under train.bin's token frequencies."""
    folder = os.path.dirname(train_bin)
    with open(os.path.join(folder, "meta.json")) as f:
        vocab = tokenization.from_data(folder, json.load(f))
    val = np.fromfile(val_bin, dtype=np.uint16)
    val = val[vocab.is_text[val]]  # EOT is never masked
    counts = np.bincount(val)
    freq = np.where(vocab.is_text, np.bincount(np.fromfile(train_bin, dtype=np.uint16), minlength=vocab.rows) + 0.5, 0)
    return dict(acc=counts.max() / len(val), token=int(counts.argmax()), text=vocab.decode([int(counts.argmax())]),
                loss=-np.log(freq[val] / freq.sum()).mean())


def baselines_file(out, rows_per_class):
    return os.path.join(out, f"baselines-{rows_per_class}.json" if rows_per_class else "baselines.json")


# -----------------------------------------------------------------------------
# finetune: seeds x {pretrained, random init} x modes x learning rates, each a finetune.py run

def random_init(init_from, out_dir):
    """The weights the pretraining in init_from started from: train.py's init, with its config and seed."""
    ckpt = runtime.load_checkpoint(init_from)
    torch.manual_seed(ckpt["config"]["seed"])  # as train.py does before it builds the model
    model = BertForPreTraining(BertConfig(**ckpt["model_config"]))
    os.makedirs(out_dir, exist_ok=True)
    runtime.save_checkpoint(dict(kind="pretraining", model=model.state_dict(), model_config=ckpt["model_config"],
                                 step=0, config=ckpt["config"], **tokenization.carried(tokenization.for_checkpoint(
                                     ckpt, init_from))),
                            os.path.join(out_dir, "ckpt.pt"))
    return out_dir


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def run(cmd, log_path):
    """Run cmd in the repository root, its output to log_path; stop with the log's tail if it fails.
    Returns the seconds it took."""
    t0 = time.time()
    with open(log_path, "w") as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        with open(log_path) as f:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{f.read()[-2000:]}")
    return time.time() - t0


def finetune_one(init_from, out_dir, out, train_csv, seed, probe, lr, args):
    """One finetune.py run, or the result it left in out_dir when it ran with the same command and inputs."""
    test_csv = f"{out}/task/test.csv"
    cmd = [sys.executable, "finetune.py", f"--init_from={init_from}", f"--out_dir={out_dir}", "--task=kernel_docs",
           f"--train_file={train_csv}", f"--val_file={out}/task/val.csv", f"--test_file={test_csv}",
           f"--learning_rate={lr}", f"--epochs={args.probe_epochs if probe else args.epochs}", f"--seed={seed}",
           f"--freeze_encoder={probe}", f"--pooling={args.pooling}", f"--dtype={args.dtype}", "--compile=False",
           "--log_interval=1000", *args.extra]
    # a run is known by its command and the contents of its checkpoint and CSVs, not their times: train_file
    # writes its subset anew each time, and a copy can keep a time. A retrained checkpoint or a rebuilt task
    # under the same names makes it run again
    key = dict(cmd=cmd[1:], sha256=[sha256(f) for f in (os.path.join(init_from, "ckpt.pt"), train_csv,
                                                          f"{out}/task/val.csv", test_csv)])
    done = os.path.join(out_dir, "result.json")
    try:
        with open(done) as f:
            r = json.load(f)
        if r.get("key") == key:
            return r
    except (OSError, ValueError):  # not run yet, or cut short: run it
        pass
    os.makedirs(out_dir, exist_ok=True)
    seconds = run(cmd + ["--overwrite=True"], os.path.join(out_dir, "finetune.log"))
    curve = [e["val_accuracy"] for e in runtime.read_log(os.path.join(out_dir, "log.jsonl")) if "val_accuracy" in e]
    with open(os.path.join(out_dir, "predictions.tsv")) as f:
        pred = [line.rstrip("\n").split("\t")[1] for line in f][1:]
    correct = np.array(pred) == np.array([r["label"] for r in read_csv(test_csv)])
    r = dict(val=max(curve), last_val=curve[-1], test=float(correct.mean()), curve=curve, seconds=seconds,
             test_correct=correct.astype(int).tolist(), key=key)
    runtime.write_bytes(done, json.dumps(r).encode())
    return r


def work_dir(out, args):
    name = os.path.basename(os.path.normpath(args.init_from)) + (f"-{args.train_rows}rows" if args.train_rows else "")
    return args.work or os.path.join(out, "runs", name)


def finetune(out, args):
    train_csv = train_file(out, args.train_rows)  # before any run, so a bad --train_rows stops at once
    pretrained = os.path.join(args.init_from, "ckpt.pt")
    if not os.path.isfile(pretrained):
        raise SystemExit(f"no ckpt.pt in {args.init_from}: --init_from is a pretraining run's out_dir "
                         "(`python train.py config/bert_transfer.py` makes out-transfer)")
    work = work_dir(out, args)
    os.makedirs(work, exist_ok=True)
    inits = {"pretrained": args.init_from}
    if not args.no_random:
        inits["random init"] = os.path.join(work, "random-init")
        ckpt = os.path.join(inits["random init"], "ckpt.pt")
        if not os.path.isfile(ckpt) or os.stat(ckpt).st_mtime_ns < os.stat(pretrained).st_mtime_ns:
            random_init(args.init_from, inits["random init"])  # missing, or older than a retrained checkpoint
    modes = {"both": ["full", "probe"], "full": ["full"], "probe": ["probe"]}[args.mode]
    if args.lpft and "full" in modes:
        modes = ["probe", "lpft"]  # full fine-tuning starts from the probes, so they run first
    results = []
    for init, path in inits.items():
        probes = {}  # seed -> the folder of that seed's linear probe, at the probe lr picked on val
        for mode in modes:
            lrs = args.probe_lr if mode == "probe" else args.lr
            runs = []
            for lr in lrs:
                for seed in args.seeds:
                    tag = f"{init.replace(' ', '-')}-{mode}{f'-lr{short(lr)}' if len(lrs) > 1 else ''}-{seed}"
                    start = probes[seed] if mode == "lpft" else path
                    r = finetune_one(start, os.path.join(work, tag), out, train_csv, seed, mode == "probe", lr, args)
                    r.update(init=init, mode=MODES[mode], seed=seed, lr=lr, dir=os.path.join(work, tag))
                    print(f"{tag}: best val {r['val']:.3f} (epochs {' '.join(f'{v:.3f}' for v in r['curve'])}), "
                          f"test {r['test']:.3f}, {r['seconds']:.0f}s", flush=True)
                    runs.append(r)
            if mode == "probe":
                best = best_lr(runs)
                probes = {r["seed"]: r["dir"] for r in runs if r["lr"] == best}
            results += runs
    runtime.write_bytes(os.path.join(work, "results.json"), json.dumps(results, indent=1).encode())
    print_table(results, baselines_file(out, args.train_rows), args.init_from, f"{out}/task/test.csv")


# -----------------------------------------------------------------------------
# table: each init and mode at its learning rate picked on val, and the pretrained - random init gap on test

def best_lr(runs):
    """The learning rate of runs (one init and mode) with the best mean val accuracy over the seeds."""
    lrs = sorted({r["lr"] for r in runs})
    return max(lrs, key=lambda lr: np.mean([r["val"] for r in runs if r["lr"] == lr]))


def picked_runs(results):
    """(init, mode) -> its runs at its own best learning rate on val (best_lr): never a rate picked on test."""
    groups, picked = {}, {}
    for r in results:
        groups.setdefault((r["init"], r["mode"]), []).append(r)
    for k, rs in groups.items():
        best = best_lr(rs)
        picked[k] = [r for r in rs if r["lr"] == best]
    return picked


def gap_and_se(a, b, files, n=4000, seed=0):
    """The gap a - b between two accuracies on the same test rows (a, b: each row's score, 0 or 1, or
    its mean over seeds) and its standard error when the test *files* are resampled with replacement.
    Paragraphs of one file are alike, so the rows are not independent draws: the files are the sample."""
    d, files = np.asarray(a, float) - np.asarray(b, float), np.asarray(files)
    _, which = np.unique(files, return_inverse=True)
    sums, sizes = np.bincount(which, d), np.bincount(which)
    picks = np.random.default_rng(seed).integers(0, len(sums), (n, len(sums)))
    return d.mean(), float((sums[picks].sum(1) / sizes[picks].sum(1)).std())


def pretrained_gaps(picked, files):
    """mode -> (gap, standard error) of pretrained - random init on test, between the runs picked on val
    with their seeds averaged; files: the test rows' files."""
    gaps = {}
    for (init, mode), a in picked.items():
        b = picked.get(("random init", mode))
        if init == "pretrained" and b and all(len(r.get("test_correct", ())) == len(files) for r in a + b):
            gaps[mode] = gap_and_se(np.mean([r["test_correct"] for r in a], 0),
                                    np.mean([r["test_correct"] for r in b], 0), files)
    return gaps


def short(lr):
    return f"{lr:.0e}".replace("e-0", "e-")  # 0.0003 -> 3e-4


def print_table(results, baselines_path, init_from, test_csv):
    def cell(v):
        return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
    print("\n| model | mode | lr | val accuracy (best epoch) | test accuracy (that epoch) | seeds |\n|---|---|---|---|---|---|")
    picked = picked_runs(results)
    for (init, mode), rs in picked.items():
        lrs = sorted({r["lr"] for r in results if (r["init"], r["mode"]) == (init, mode)})
        grid = f" (best on val of {', '.join(map(short, lrs))})" if len(lrs) > 1 else ""
        print(f"| {init} | {mode} | {short(rs[0]['lr'])}{grid} | {cell([r['val'] for r in rs])} | "
              f"{cell([r['test'] for r in rs])} | {' '.join(str(r['seed']) for r in rs)} |")
    b = None
    if os.path.isfile(baselines_path):
        with open(baselines_path) as f:
            b = json.load(f)
        print(f"| majority class | - | - | {b['majority']['val']:.3f} | {b['majority']['test']:.3f} | - |")
        print(f"| bag of words (TF-IDF + LR) | - | - | {b['bag of words']['val']:.3f} | {b['bag of words']['test']:.3f} | - |")
    log = os.path.join(init_from, "log.jsonl")
    evals = [e for e in runtime.read_log(log) if "val_mlm_loss" in e] if os.path.isfile(log) else []
    if evals:
        e = evals[-1]
        unigram = f" (unigram baseline: loss {b['unigram mlm']['loss']:.3f}, accuracy {b['unigram mlm']['acc']:.1%})" if b else ""
        print(f"\npretraining ({init_from}) at step {e['step']}: val MLM loss {e['val_mlm_loss']:.3f}, "
              f"val masked-token accuracy {e['val_mlm_acc']:.1%}{unigram}")
    print("(± is the standard deviation over seeds)")
    if os.path.isfile(test_csv):
        files = [r["file"] for r in read_csv(test_csv)]
        for mode, (gap, se) in pretrained_gaps(picked, files).items():
            print(f"{mode}, pretrained - random init on test: {gap:+.3f} ± {se:.3f} (standard error over the "
                  f"{len(set(files))} test files, resampled; seeds averaged)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["data", "baselines", "finetune", "table"])
    p.add_argument("--out", default=os.path.join(ROOT, "data", "transfer"), help="where the data goes")
    p.add_argument("--init_from", default="out-transfer", help="finetune, table: the pretraining run's out_dir")
    p.add_argument("--work", default="", help="finetune, table: where the runs go (default <out>/runs/<init_from's name>); "
                   "a run finished there with the same settings and inputs is reused, any other replaced")
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
    p.add_argument("--train_rows", type=int, default=0, help="labelled rows per class (0: all of train.csv, 200)")
    p.add_argument("--extra", action="append", default=[], help="a finetune.py flag, e.g. --extra=--dropout=0.0; repeat it for more")
    args = p.parse_args(argv)
    if args.train_rows < 0 or min(args.lr + args.probe_lr) <= 0 or min(args.epochs, args.probe_epochs) < 1:
        p.error("--train_rows must be >= 0, learning rates > 0 and epochs >= 1")
    if problem := runtime.check_dtype(args.dtype):  # before the random init is written or any run starts
        p.error(problem)
    if args.command == "data":
        build_data(args.out)
    elif args.command == "baselines":
        baselines(args.out, args.train_rows)
    elif args.command == "finetune":
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

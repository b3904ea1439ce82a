"""
Fine-tune BERT on a sentence or sentence-pair task: GLUE, AG News, IMDB, or your own labelled files.

    python finetune.py config/finetune_sst2.py --init_from=out                  # our pretraining run
    python finetune.py config/finetune_sst2.py --init_from=bert-base-uncased    # HuggingFace weights
    python finetune.py --task=reviews --train_file=train.csv --val_file=val.csv --text_column=review
    python finetune.py config/finetune_sst2.py --init_from=out-sst2 --eval_only=True
    torchrun --standalone --nproc_per_node=8 finetune.py config/finetune_mnli.py --init_from=out
    python finetune.py --help                                                   # every setting

Inputs are [CLS] A [SEP] B [SEP], token type 0 for A and 1 for B (Devlin et al. 2018, sec. 3). A pair
longer than block_size loses tokens from its longer text first. Each batch is padded only to its own
longest row, and rows of similar length are batched together. After every epoch the task's metric is
computed on the validation split, and the best model so far is kept in out_dir/ckpt.pt; out_dir/log.jsonl
holds the training loss and the validation metrics.
"""
import csv
import io
import json
import math
import os
import time
from collections import namedtuple
from dataclasses import asdict, replace

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import runtime
import tokenizer as tokenization
from configurator import read_settings, require
from model import BertConfig, BertForSequenceClassification, BertModel, resolve_checkpoint

# -----------------------------------------------------------------------------
# Settings: override with config files and --key=value flags
# the model
init_from = "out"          # our run folder (train.py's or finetune.py's), or a HuggingFace BERT: a folder with config.json, the weights and vocab.txt or tokenizer.json (export.py's), or a hub name such as bert-base-uncased
out_dir = "out-finetune"   # where the best epoch's ckpt.pt, log.jsonl and predictions.tsv go
overwrite = False          # let this run replace a fine-tuned checkpoint already in out_dir
eval_only = False          # evaluate init_from (fine-tuned) on the validation split, predict the test split
pooling = "auto"           # the sequence vector the classifier reads: 'cls' (BERT's pooled [CLS]), 'mean' (of the hidden states), or 'auto': a fine-tuned checkpoint's own, else 'cls' (which export.py can hand to transformers)
# the task: a name in TASKS (downloaded through `datasets`), or your own .csv / .jsonl files
task = ""                  # with train_file: just a name for the run, stored in the checkpoint
train_file = ""
val_file = ""
test_file = ""             # needs no labels: predictions go to out_dir/predictions.tsv
text_column = "text"
text_pair_column = ""      # "" for single texts
label_column = "label"
label_type = "auto"        # auto: labels that are all numbers, one with a decimal point, mean regression; anything else means classes. Or say "class" / "regression"
metric = ""                # the metric that picks the best checkpoint; "" for the task's own
# optimization, after BERT's GLUE recipe (sec. 4.1): batch 32, lr 2e-5..5e-5, 3 epochs
block_size = 128           # tokens per sequence at most, [CLS] and [SEP]s included
examples_per_step = 32     # per optimizer step over all processes
epochs = 3
learning_rate = 0.0        # 0: by the encoder's width, 2e-5 at 768 (BERT-base) up to 1e-3 below 256: a small encoder needs larger steps
warmup_ratio = 0.1         # share of all steps spent warming up; then linear decay to 0
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0            # 0 to turn off
dropout = 0.1
freeze_encoder = False     # linear probe: only the classifier trains, on the frozen encoder's output
freeze_embeddings = False  # keep the token, position and token-type embeddings as they start (the layers above train)
seed = 1337
log_interval = 50          # steps between log lines
# system
device = "auto"            # auto, cpu, cuda, cuda:1, mps
dtype = "auto"             # auto: bf16 where the GPU or CPU has it in hardware, else fp16 on a GPU, fp32 on a CPU; or float32, bfloat16, float16
compile = None             # torch.compile the model; None: where it pays, on CUDA (on a CPU an epoch compiles longer than it trains)
# -----------------------------------------------------------------------------

FROM_CHECKPOINT = ("task", "text_column", "text_pair_column", "label_column", "block_size", "metric", "pooling")  # eval_only
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def check_settings(cfg, world_size=1):
    """Everything wrong with the settings, as messages (empty when they are fine)."""
    p = []
    for name in ("examples_per_step", "epochs", "log_interval"):
        if getattr(cfg, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.block_size < 8:
        p.append(f"block_size must be at least 8 ([CLS] A [SEP] B [SEP] and some text), got {cfg.block_size}")
    if cfg.examples_per_step % world_size:
        p.append(f"examples_per_step={cfg.examples_per_step} must be a multiple of the number of processes ({world_size})")
    if not 0 <= cfg.learning_rate < math.inf:
        p.append(f"learning_rate must be positive and finite (or 0 for the encoder's width), got {cfg.learning_rate}")
    if not 0 <= cfg.warmup_ratio < 1:
        p.append(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    for name in ("weight_decay", "grad_clip", "seed"):
        if getattr(cfg, name) < 0:
            p.append(f"{name} must not be negative, got {getattr(cfg, name)}")
    for name in ("beta1", "beta2", "dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            p.append(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.metric and cfg.metric not in METRICS:
        p.append(f"metric must be one of {', '.join(METRICS)} (or '' for the task's own), got {cfg.metric!r}")
    if cfg.pooling not in ("auto", "cls", "mean"):
        p.append(f"pooling must be 'auto', 'cls' or 'mean', got {cfg.pooling!r}")
    if cfg.label_type not in ("auto", "class", "regression"):
        p.append(f"label_type must be 'auto', 'class' or 'regression', got {cfg.label_type!r}")
    p.append(runtime.check_dtype(cfg.dtype))
    p.append(runtime.check_device(cfg.device))
    if not (cfg.compile is None or isinstance(cfg.compile, bool)):
        p.append(f"compile must be True, False or None (where it pays: on CUDA), got {cfg.compile!r}")
    p.append(runtime.check_writable(cfg.out_dir))
    for name in ("train_file", "val_file", "test_file"):
        path = getattr(cfg, name)
        if path and not os.path.isfile(path):
            p.append(f"{name}={path!r}: no such file")
    return p


# -----------------------------------------------------------------------------
# Tasks. Every one has a "label" column; the test splits of GLUE are unlabelled.

Task = namedtuple("Task", "path config text pair val test metric")
TASKS = {
    "cola": Task("nyu-mll/glue", "cola", "sentence", "", "validation", "test", "mcc"),
    "sst2": Task("nyu-mll/glue", "sst2", "sentence", "", "validation", "test", "accuracy"),
    "mrpc": Task("nyu-mll/glue", "mrpc", "sentence1", "sentence2", "validation", "test", "f1"),
    "qqp": Task("nyu-mll/glue", "qqp", "question1", "question2", "validation", "test", "f1"),
    "stsb": Task("nyu-mll/glue", "stsb", "sentence1", "sentence2", "validation", "test", "spearman"),
    "mnli": Task("nyu-mll/glue", "mnli", "premise", "hypothesis", "validation_matched", "test_matched", "accuracy"),
    "qnli": Task("nyu-mll/glue", "qnli", "question", "sentence", "validation", "test", "accuracy"),
    "rte": Task("nyu-mll/glue", "rte", "sentence1", "sentence2", "validation", "test", "accuracy"),
    # no validation split: their test split is where results are usually reported
    "ag_news": Task("fancyzhx/ag_news", None, "text", "", "test", None, "accuracy"),
    "imdb": Task("stanfordnlp/imdb", None, "text", "", "test", None, "accuracy"),
}


def read_task(name):
    """The splits of a named task as lists of row dicts (labels as class names), and its class names
    in id order (None for a regression task)."""
    spec = TASKS[name]
    try:
        from datasets import load_dataset  # only named tasks need it; your own files do not
    except ImportError:
        raise SystemExit("named tasks are read through `datasets`: pip install datasets")
    try:
        ds = load_dataset(spec.path, spec.config)
    except Exception as e:
        raise SystemExit(f"could not load {spec.path} {spec.config or ''} through `datasets` "
                         f"({type(e).__name__}: {e}). "
                         "Offline? Save its splits as .csv or .jsonl and pass train_file and val_file")
    names = getattr(ds["train"].features["label"], "names", None)  # a ClassLabel; STS-B's score is a float

    def rows(split):
        out = ds[split].to_list()
        if names:
            for r in out:
                r["label"] = names[r["label"]] if r["label"] >= 0 else None  # -1: an unlabelled test row
        return out
    return {"train": rows("train"), "val": rows(spec.val), "test": rows(spec.test) if spec.test else None}, names


def read_rows(path):
    """The rows of a .csv file (with a header row) or a .jsonl file (one JSON object per line), as dicts."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".jsonl", ".json"):
        raise SystemExit(f"{path}: unknown file type {ext!r}; use .csv with a header row, or .jsonl with "
                         "one JSON object per line")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel's "CSV UTF-8") is not text
            if ext == ".csv":
                return list(csv.DictReader(f))
            rows = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path} line {n} is not JSON ({e.msg}): a .jsonl file holds one object per line")
                if not isinstance(rows[-1], dict):
                    raise SystemExit(f"{path} line {n} is not a JSON object: a .jsonl file holds one object per line")
            return rows
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read {path}: {getattr(e, 'strerror', None) or e}")


def get_columns(rows, where, text_col, pair_col, label_col):
    """(texts, pairs or None, labels or None) from row dicts; label_col "" when the split is unlabelled.
    One clear message for a missing column or an empty text."""
    if not rows:
        raise SystemExit(f"{where} holds no rows")
    for col in (text_col, pair_col, label_col):
        if col and col not in rows[0]:
            raise SystemExit(f"{where} has no column '{col}'; its columns are: {', '.join(map(str, rows[0]))}. "
                             "Set text_column, text_pair_column and label_column to name yours")
    texts, pairs, labels = [], [], []
    for i, row in enumerate(rows):
        for col, out in ((text_col, texts), (pair_col, pairs)):
            if not col:
                continue
            value = row.get(col)
            if value is None or not str(value).strip():
                raise SystemExit(f"{where} row {i + 1}: empty text in '{col}'. Fill it in or remove the row")
            out.append(str(value))
        if label_col:
            value = row.get(label_col)
            if value is None or str(value).strip() == "":
                raise SystemExit(f"{where} row {i + 1}: no label in '{label_col}'. Fill it in or remove the row")
            labels.append(value)
    return texts, (pairs if pair_col else None), (labels if label_col else None)


def _number(v):
    if isinstance(v, bool):
        return None  # JSON true/false are classes
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def label_names_from(labels, label_type="auto"):
    """Class names in id order, or None for regression. Numeric class names sort by value ("2" < "10")."""
    numbers = [_number(v) for v in labels]
    written_as_float = any(isinstance(v, float) or (isinstance(v, str) and "." in v) for v in labels)
    if label_type == "regression" or (label_type == "auto" and None not in numbers and written_as_float):
        return None
    names = sorted({str(v) for v in labels}, key=lambda s: (0, _number(s), s) if _number(s) is not None else (1, 0, s))
    if len(names) < 2:
        raise SystemExit(f"the training data has a single label ({names[0]!r}): a classifier needs two or more. "
                         "For scores, set label_type='regression'")
    return names


def label_ids(labels, names, where):
    """Class ids (int64) for names, or float32 targets when names is None (regression)."""
    if names is None:
        values = [_number(v) for v in labels]
        if None in values:
            i = values.index(None)
            raise SystemExit(f"{where} row {i + 1}: label {labels[i]!r} is not a number, and this is a regression task")
        return np.array(values, dtype=np.float32)
    index = {n: i for i, n in enumerate(names)}
    ids = np.empty(len(labels), dtype=np.int64)
    for i, v in enumerate(labels):
        if str(v) not in index:
            raise SystemExit(f"{where} row {i + 1}: label {str(v)!r} never appears in the training data "
                             f"(its labels: {', '.join(names)}). Fix the row, or add training examples of it")
        ids[i] = index[str(v)]
    return ids


# -----------------------------------------------------------------------------
# Token ids and batches

def truncate_lengths(la, lb, budget):
    """Lengths of A and B after cutting the longer one, a token at a time, until la + lb <= budget
    (ties cut B, as the original BERT code does), computed in one step rather than a loop."""
    if la + lb <= budget:
        return la, lb
    short = min(la, lb)
    if 2 * short <= budget:  # only the longer text is cut
        return (budget - short, lb) if la > lb else (la, budget - short)
    return (budget + 1) // 2, budget // 2


def encode(tok, texts, pairs, block_size):
    """[CLS] A [SEP] (B [SEP]) token ids cut to block_size. Returns the rows, where token type 1 starts
    in each (its length for a single text) and how many rows were cut."""
    threads = min(8, os.cpu_count() or 1)
    a = tok.encode_batch(texts, num_threads=threads)
    b = tok.encode_batch(pairs, num_threads=threads) if pairs is not None else None
    budget = block_size - (2 if b is None else 3)
    rows, starts, n_cut = [], [], 0
    for i in range(len(a)):
        la, lb = len(a[i]), len(b[i]) if b else 0
        ka, kb = truncate_lengths(la, lb, budget)
        n_cut += (ka, kb) != (la, lb)
        ids = [tok.cls] + a[i][:ka] + [tok.sep]
        starts.append(len(ids))
        if b:
            ids += b[i][:kb] + [tok.sep]
        rows.append(ids)
    return rows, starts, n_cut


def length_grouped_batches(lengths, batch_size, rng=None):
    """Row indices in batches of similar length, so that padding each batch to its longest row costs
    little. With rng (training): shuffle, sort within windows of 100 batches, shuffle the batches; still
    random enough for SGD. Every batch is full: len(lengths) % batch_size random rows sit the epoch out.
    Without rng (evaluation): every row, sorted by length."""
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = rng.permutation(len(lengths))[:len(lengths) // batch_size * batch_size]
        window = 100 * batch_size
        for i in range(0, len(order), window):
            chunk = order[i:i + window]
            order[i:i + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def collate(data, rows, pad_id, block_size):
    """Token ids, token types and attention mask (B, T) for the given row indices, padded to the longest
    row rounded up to a multiple of 8 (tensor-core friendly, and few distinct shapes for torch.compile)."""
    T = max(len(data["ids"][i]) for i in rows)
    T = min(-(-T // 8) * 8, block_size)
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    types = np.zeros((len(rows), T), dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=bool)
    for r, i in enumerate(rows):
        ids, start = data["ids"][i], data["starts"][i]
        x[r, :len(ids)] = ids
        types[r, start:len(ids)] = 1
        mask[r, :len(ids)] = True
    return torch.from_numpy(x), torch.from_numpy(types), torch.from_numpy(mask)


# -----------------------------------------------------------------------------
# Metrics, in numpy. Where one is undefined (a constant prediction or a single class, so that a
# denominator is 0) it is 0.0, as in scikit-learn, rather than NaN: "no measurable agreement".

def accuracy(pred, y):
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def f1(pred, y):
    """F1 of class 1 (the positive class of MRPC and QQP)."""
    pred, y = np.asarray(pred), np.asarray(y)
    tp = np.sum((pred == 1) & (y == 1))
    wrong = np.sum((pred == 1) != (y == 1))  # false positives + false negatives
    return float(2 * tp / (2 * tp + wrong)) if tp + wrong else 0.0


def matthews(pred, y):
    """Matthews correlation, for any number of classes (Gorodkin 2004); CoLA's metric."""
    pred, y = np.asarray(pred), np.asarray(y)
    n = int(max(pred.max(), y.max())) + 1
    C = np.zeros((n, n), dtype=np.float64)
    np.add.at(C, (y, pred), 1)  # confusion matrix, rows = truth
    t, p, c, s = C.sum(1), C.sum(0), np.trace(C), C.sum()
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


def pearson(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant has no correlation; tested on exact equality, as a mean can round
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def rank(x):
    """1-based ranks; tied values share the average of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def spearman(a, b):
    return pearson(rank(a), rank(b))


def compute_metrics(pred, y, n_labels):
    """Every metric that applies: accuracy, F1 (binary tasks) and Matthews correlation for classes;
    Pearson and Spearman correlation for regression (n_labels == 1)."""
    if n_labels == 1:
        return {"pearson": pearson(pred, y), "spearman": spearman(pred, y)}
    out = {"accuracy": accuracy(pred, y)}
    if n_labels == 2:
        out["f1"] = f1(pred, y)
    out["mcc"] = matthews(pred, y)
    return out


# -----------------------------------------------------------------------------
# The model

def is_our_checkpoint(init_from):
    return os.path.isfile(os.path.join(init_from, "ckpt.pt")) or init_from.endswith(".pt")


def default_learning_rate(n_embd):
    """The fine-tuning learning rate for an encoder this wide, when none is given. BERT's 2e-5 suits
    BERT-base (768); narrower encoders need larger steps: 2e-5 leaves a 2 x 128 encoder at chance after
    3 epochs, where 1e-3 fine-tunes it. In between, the rates of Turc et al. 2019's grid for BERT-small
    and BERT-mini."""
    return 2e-5 if n_embd >= 768 else 1e-4 if n_embd >= 512 else 3e-4 if n_embd >= 256 else 1e-3


def load_model(init_from, labels, n_labels, dropout, block_size, pooling="auto", need_head=False):
    """A BertForSequenceClassification with n_labels outputs starting from init_from, and the tokenizer
    that belongs to it. The classifier head is kept only from a checkpoint fine-tuned here on the same
    labels with the same pooling (need_head: or stop). Returns (model, tokenizer)."""
    if is_our_checkpoint(init_from):
        ckpt = runtime.load_checkpoint(init_from)
        tok = tokenization.for_checkpoint(ckpt, runtime.run_folder(init_from))
        config = BertConfig(**ckpt["model_config"])
        if pooling == "auto":  # a fine-tuned checkpoint keeps its own
            pooling = ckpt.get("pooling", "cls")
        same_head = ckpt.get("n_labels") == n_labels and ckpt.get("labels") == labels and ckpt.get("pooling") == pooling
        if need_head and not same_head:
            raise SystemExit(f"{init_from} was fine-tuned with pooling={ckpt.get('pooling')!r} on labels {ckpt.get('labels')}: "
                             f"its head does not read pooling={pooling!r} or labels {labels}; drop those settings")
        keep = ("bert.", "classifier.") if same_head else ("bert.",)
        weights = {k: v for k, v in ckpt["model"].items() if k.startswith(keep)}
    else:
        if os.path.isdir(init_from) and not os.path.isfile(os.path.join(init_from, "config.json")):
            raise SystemExit(f"{init_from} holds neither ckpt.pt (ours, from train.py) nor config.json (a HuggingFace "
                             "BERT): point init_from at one of those")
        try:
            folder = resolve_checkpoint(init_from)  # a hub name is downloaded; offline it says so
            encoder = BertModel.from_pretrained(folder, verbose=False)  # a head of another task is not ours to keep
        except (ValueError, ImportError) as e:
            raise SystemExit(str(e))
        config, weights = encoder.config, {f"bert.{k}": v for k, v in encoder.state_dict().items()}
        pooling = "cls" if pooling == "auto" else pooling  # BERT's trained pooler, as in the paper
        tok = tokenization.get_tokenizer(folder)
    if tok.n_ids > config.vocab_size:
        raise SystemExit(f"{init_from}: its tokenizer ({tok.name}) has {tok.n_ids} ids but the model's embedding "
                         f"table only {config.vocab_size} rows: the weights and the vocabulary do not belong together. "
                         "A HuggingFace folder needs its own vocab.txt or tokenizer.json")
    if block_size > config.max_positions:
        raise SystemExit(f"block_size={block_size} is longer than {init_from} has positions for ({config.max_positions})")
    model = BertForSequenceClassification(replace(config, dropout=dropout), n_labels, pooling)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a shape that differs
        missing, unexpected = [str(e).splitlines()[-1].strip()], []
    if unexpected or [k for k in missing if not k.startswith("classifier.")]:
        raise SystemExit(f"the weights in {init_from} do not fit this model.py ({(unexpected + missing)[:3]}); "
                         "was it written by another version?")
    return model, tok


def write_vocabulary(out_dir, tokenizer):
    """Beside the checkpoint (which carries it too), a vocabulary other than GPT-2's as the files it came in."""
    if tokenizer.name == "tokenizer.json":
        runtime.write_bytes(os.path.join(out_dir, "tokenizer.json"), tokenizer.tok.to_str().encode())
    if tokenizer.name == "wordpiece":  # with its casing, so that the folder reads as it was used
        runtime.write_bytes(os.path.join(out_dir, "vocab.txt"), tokenizer.vocab_txt())
        runtime.write_bytes(os.path.join(out_dir, "tokenizer_config.json"),
                            json.dumps({"do_lower_case": tokenizer.lowercase}).encode())  # the casing the tokenizer settled on, even where the folder only implied it
        runtime.write_bytes(os.path.join(out_dir, "tokenizer_config.json"),
                            json.dumps({"do_lower_case": tokenizer.lowercase}).encode())


@torch.no_grad()
def predict(model, data, batch_size, device, ctx, pad_id, block_size, rank=0, world_size=1):
    """Logits (N, n_labels) as float32 numpy, in row order. With world_size > 1 (DDP) every process
    scores a share of the batches, and every process gets all the logits back."""
    model.eval()
    out = np.zeros((len(data["ids"]), model.n_labels), dtype=np.float32)
    for rows in length_grouped_batches([len(r) for r in data["ids"]], batch_size)[rank::world_size]:
        x, types, mask = (t.to(device) for t in collate(data, rows, pad_id, block_size))
        with ctx:
            logits, _ = model(x, types, mask)
        out[rows] = logits.float().cpu().numpy()
    if world_size > 1:
        shares = [None] * world_size
        torch.distributed.all_gather_object(shares, out)
        out = np.sum(shares, axis=0)  # each row was scored by one process; the others hold exact zeros for it
    return out


def predictions(logits):
    return logits[:, 0] if logits.shape[1] == 1 else logits.argmax(1)


def write_predictions(path, logits, names, data):
    """One row per test example: its index, the prediction (the class name, or the score of a regression),
    the predicted class's probability, and the text (and its pair), tab-separated."""
    pred = predictions(logits)
    header = ["index", "prediction"] + ([] if names is None else ["probability"]) + ["text"]
    header += ["text_pair"] if data["pairs"] is not None else []
    lines = []
    if names is not None:
        p = np.exp(logits - logits.max(1, keepdims=True))
        prob = (p / p.sum(1, keepdims=True)).max(1)
    for i, v in enumerate(pred):
        row = [str(i), f"{v:.4f}" if names is None else str(names[v])] + ([] if names is None else [f"{prob[i]:.4f}"])
        row += [data["texts"][i]] + ([data["pairs"][i]] if data["pairs"] is not None else [])
        lines.append(row)
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows([header] + lines)  # quotes text with tabs or newlines
    runtime.write_bytes(path, buf.getvalue().encode())


def read_splits(cfg):
    """The task's rows as far as they can be read before the tokenizer is known: (splits, where each split
    came from, (text, pair, label) columns, class names or None, metric name)."""
    if cfg.task in TASKS:
        if cfg.train_file or cfg.val_file or cfg.test_file:
            raise SystemExit(f"task={cfg.task!r} is a named task: leave train_file, val_file and test_file empty, "
                             "or give your own files another task name")
        splits, names = read_task(cfg.task)
        spec = TASKS[cfg.task]
        return splits, {s: f"{cfg.task} {s} split" for s in splits}, (spec.text, spec.pair, "label"), names, \
            cfg.metric or spec.metric
    if not (cfg.train_file or cfg.val_file or cfg.test_file):
        raise SystemExit(f"set task to one of {', '.join(TASKS)}, or set train_file and val_file to your own "
                         ".csv / .jsonl files")
    paths = {"train": "" if cfg.eval_only else cfg.train_file, "val": cfg.val_file, "test": cfg.test_file}
    if not cfg.eval_only and not (cfg.train_file and cfg.val_file):
        raise SystemExit("fine-tuning on your own files needs train_file, and val_file to pick the best epoch")
    splits = {s: read_rows(p) if p else None for s, p in paths.items()}
    cols = (cfg.text_column, cfg.text_pair_column, cfg.label_column)
    names = None  # eval_only: the checkpoint's
    if not cfg.eval_only:
        names = label_names_from(get_columns(splits["train"], cfg.train_file, *cols)[2], cfg.label_type)
    return splits, paths, cols, names, cfg.metric


def task_metric(names, metric_name):
    """(n_labels, the metric that picks the best epoch) for class names (None: regression)."""
    regression = names is None
    metric_name = metric_name or ("spearman" if regression else "accuracy")  # BERT reports STS-B in Spearman
    known = ["pearson", "spearman"] if regression else ["accuracy", "f1", "mcc"] if len(names) == 2 else ["accuracy", "mcc"]
    if metric_name not in known:
        raise SystemExit(f"metric={metric_name!r} does not apply to this task; choose one of {', '.join(known)}")
    return 1 if regression else len(names), metric_name


def tokenize_splits(tok, splits, where, cols, names, block_size, say):
    """{split: ids, where token type 1 starts, labels (None for an unlabelled test split), texts}."""
    data = {}
    for split, rows in splits.items():
        if rows is None:
            continue
        label_col = cols[2]
        if split == "test" and not all(str(r.get(label_col) or "").strip() for r in rows):
            label_col = ""  # an unlabelled test split: only predictions
        texts, pairs, labels = get_columns(rows, where[split], *cols[:2], label_col)
        ids, starts, n_cut = encode(tok, texts, pairs, block_size)
        labels = None if labels is None else label_ids(labels, names, where[split])
        data[split] = {"ids": ids, "starts": starts, "labels": labels, "texts": texts, "pairs": pairs}
        say(f"{split}: {len(ids):,} rows, {n_cut:,} cut to block_size={block_size} (the longer text first), "
            f"{np.mean([len(r) for r in ids]):.1f} tokens on average")
    return data


def score(model, data, names, out_dir, pred_args, rank, world_size, say):
    """The validation metrics, printed; and out_dir/predictions.tsv for the test split, with its metrics
    where it has labels. Returns the validation metrics (None without a validation split)."""
    n_labels = model.n_labels
    out = {}
    for split in ("val", "test"):
        if split not in data:
            continue
        logits = predict(model, data[split], *pred_args, rank, world_size)
        if data[split]["labels"] is not None:
            out[split] = compute_metrics(predictions(logits), data[split]["labels"], n_labels)
            say(f"{split} " + " ".join(f"{k} {v:.4f}" for k, v in out[split].items()))
        if split == "test" and rank == 0:
            write_predictions(os.path.join(out_dir, "predictions.tsv"), logits, names, data["test"])
            say(f"wrote {len(logits):,} test predictions to {out_dir}/predictions.tsv")
    return out.get("val")


def evaluate_only(cfg, given, local_rank, rank, world_size, say):
    """eval_only: a model fine-tuned here, scored on the validation split and predicting the test split,
    with the task settings it was trained with unless the command line gives others."""
    if not is_our_checkpoint(cfg.init_from):
        raise SystemExit("eval_only evaluates a model fine-tuned by finetune.py: set init_from to its out_dir")
    ckpt = runtime.load_checkpoint(cfg.init_from, kinds=("finetuning",))
    own_files = any(k.endswith("_file") for k in given) and ckpt["config"]["task"] in TASKS
    for k in FROM_CHECKPOINT:  # your own files replace a named task's data
        if k not in given and not (k == "task" and own_files):
            setattr(cfg, k, ckpt["config"][k])
    if "out_dir" not in given:  # predictions go beside the checkpoint
        cfg.out_dir = runtime.run_folder(cfg.init_from)
    splits, where, cols, names, _ = read_splits(cfg)
    if cfg.task in TASKS and ckpt["labels"] != names:
        raise SystemExit(f"{cfg.init_from} was fine-tuned on labels {ckpt['labels']}, but {cfg.task} has {names}")
    names = ckpt["labels"]  # the checkpoint, not the data, fixes the labels and their ids
    splits.pop("train", None)
    dev, _, ctx, _ = runtime.setup(cfg.device, cfg.dtype, local_rank)
    model, tok = load_model(cfg.init_from, names, 1 if names is None else len(names), cfg.dropout, cfg.block_size,
                               cfg.pooling, need_head=True)
    data = tokenize_splits(tok, splits, where, cols, names, cfg.block_size, say)
    os.makedirs(cfg.out_dir, exist_ok=True)
    pred_args = (cfg.examples_per_step, dev, ctx, tok.pad, cfg.block_size)
    return {"val": score(model.to(dev), data, names, cfg.out_dir, pred_args, rank, world_size, say)}


# -----------------------------------------------------------------------------

def main(argv=None):
    """Run with settings from argv (default sys.argv[1:]). Returns a summary dict (tests use it)."""
    cfg, given = read_settings(globals(), argv)
    ddp, rank, local_rank, world_size = runtime.init_distributed()
    master = rank == 0
    say = print if master else (lambda *args, **kwargs: None)
    require(check_settings(cfg, world_size))
    if cfg.eval_only:
        return evaluate_only(cfg, given, local_rank, rank, world_size, say)
    ckpt_path, log_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "log.jsonl")
    if is_our_checkpoint(cfg.init_from) and os.path.realpath(cfg.out_dir) == os.path.realpath(runtime.run_folder(cfg.init_from)):
        raise SystemExit(f"out_dir is init_from's folder ({cfg.out_dir}): fine-tuning would overwrite the "
                         "checkpoint it starts from. Choose another out_dir")
    if not cfg.overwrite:
        runtime.refuse_overwrite(ckpt_path, "a checkpoint")

    # data, model and tokenizer; every check comes before any write
    splits, where, cols, names, metric_name = read_splits(cfg)
    n_labels, metric_name = task_metric(names, metric_name)
    dev, device_type, ctx, scaler = runtime.setup(cfg.device, cfg.dtype, local_rank)
    torch.manual_seed(cfg.seed)  # the same fresh head on every process
    raw_model, tok = load_model(cfg.init_from, names, n_labels, cfg.dropout, cfg.block_size, cfg.pooling)
    data = tokenize_splits(tok, splits, where, cols, names, cfg.block_size, say)
    learning_rate = cfg.learning_rate or default_learning_rate(raw_model.config.n_embd)
    say(f"task {cfg.task or 'custom'}: {'regression' if names is None else f'{n_labels} classes'}, best epoch by "
        f"{metric_name}; from {cfg.init_from} ({tok.name} tokenizer, {raw_model.num_params() / 1e6:.2f}M parameters, "
        f"{raw_model.pooling} pooling); {runtime.precision(ctx)} on {dev}")

    # what trains, and how
    raw_model.to(dev)
    if cfg.freeze_encoder:
        raw_model.bert.requires_grad_(False)  # the optimizer skips it and autograd computes no encoder gradients
    if cfg.freeze_embeddings:  # with few labels, 6.4M embedding rows of a small model can memorise them instead
        for table in (raw_model.bert.wte, raw_model.bert.wpe, raw_model.bert.wtt):
            table.requires_grad_(False)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, learning_rate, (cfg.beta1, cfg.beta2), device_type)
    model, eval_model = runtime.wrap(raw_model, cfg.compile, ddp, device_type, local_rank)
    if ddp:
        torch.manual_seed(cfg.seed + 1 + rank)  # the same fresh head everywhere, but each process its own dropout
    lengths = np.array([len(r) for r in data["train"]["ids"]])
    steps_per_epoch = len(lengths) // cfg.examples_per_step  # full batches only: the remainder sits out at random
    if steps_per_epoch == 0:
        raise SystemExit(f"the training data ({len(lengths)} rows) is smaller than one step "
                         f"(examples_per_step={cfg.examples_per_step})")
    max_steps = cfg.epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_ratio * max_steps)
    say(f"{cfg.epochs} epochs x {steps_per_epoch:,} steps x {cfg.examples_per_step} rows ({world_size} process"
        f"{'es' if world_size > 1 else ''} x {cfg.examples_per_step // world_size}); learning rate {learning_rate:g}"
        f"{'' if cfg.learning_rate else ' (for this width)'}, {warmup_steps:,} warmup steps, then linear decay to 0"
        + ("; encoder frozen, training the classifier only" if cfg.freeze_encoder else ""))
    pred_args = (cfg.examples_per_step, dev, ctx, tok.pad, cfg.block_size)
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_file = runtime.open_log(log_path, os.path.exists(ckpt_path))

    # the loop: an evaluation after every epoch; the best epoch is saved
    step, best, history = 0, None, []
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.freeze_encoder:
            raw_model.bert.eval()  # frozen features: no dropout noise in them
        rng = np.random.default_rng(cfg.seed + epoch)  # the same on every process, so that they share out one batch
        t_log, steps_logged = time.time(), 0
        for rows in length_grouped_batches(lengths, cfg.examples_per_step, rng):
            rows = rows[rank::world_size]  # rows of a batch have similar lengths: an even split of the work
            lr = runtime.get_lr(step, learning_rate, warmup_steps, max_steps, 0.0, "linear")
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, types, mask = collate(data["train"], rows, tok.pad, cfg.block_size)
            b = runtime.to_device(dict(idx=x, token_type_ids=types, attention_mask=mask,  # without waiting for the GPU
                                       labels=torch.from_numpy(data["train"]["labels"][rows])), dev)
            with ctx:
                _, loss = model(**b)
            scaler.scale(loss).backward()
            runtime.optimizer_step(optimizer, scaler, raw_model.parameters(), cfg.grad_clip)
            step += 1
            steps_logged += 1
            if step % cfg.log_interval == 0 or step == max_steps:
                loss_value = loss.item()  # the one sync between evaluations
                if runtime.any_process([not math.isfinite(loss_value)], dev, ddp)[0]:
                    raise runtime.diverged(f"loss is {loss_value} at step {step}", ckpt_path)
                dt = (time.time() - t_log) / steps_logged
                say(f"epoch {epoch + 1} step {step}/{max_steps}: loss {loss_value:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms/step")
                if master:
                    runtime.write_log(log_file, {"step": step, "epoch": epoch + 1, "loss": loss_value, "lr": lr})
                t_log, steps_logged = time.time(), 0

        logits = predict(eval_model, data["val"], *pred_args, rank, world_size)  # the same on every process
        # huge but finite weights (learning_rate=1e9) can still give NaN outputs, which argmax would hide
        if not (runtime.all_finite(raw_model) and np.isfinite(logits).all()):
            raise runtime.diverged(f"the weights or outputs hold NaN/inf after epoch {epoch + 1}", ckpt_path)
        scores = compute_metrics(predictions(logits), data["val"]["labels"], n_labels)
        history.append(scores)
        improved = best is None or scores[metric_name] > best
        best = scores[metric_name] if improved else best
        say(f"epoch {epoch + 1} val " + " ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + (", best so far: saved" if improved else f", best {metric_name} stays {best:.4f}"))
        if master:
            runtime.write_log(log_file, {"step": step, "epoch": epoch + 1, **{f"val_{k}": v for k, v in scores.items()}})
        if improved and master:
            write_vocabulary(cfg.out_dir, tok)
            runtime.save_checkpoint({
                "kind": "finetuning", "model": raw_model.state_dict(), "model_config": asdict(raw_model.config),
                "n_labels": n_labels, "labels": names,  # class names in id order; None for regression
                "pooling": raw_model.pooling, "task": cfg.task or "custom", **tokenization.carried(tok),
                "init_from": cfg.init_from, "metric": metric_name, "best_val_metric": best, "val_metrics": scores,
                "epoch": epoch + 1, "step": step, "config": vars(cfg) | {"learning_rate": learning_rate},
            }, ckpt_path)
            pred_path = os.path.join(cfg.out_dir, "predictions.tsv")
            if log_file.name != log_path and os.path.exists(pred_path):
                os.remove(pred_path)  # the earlier run's, made by the model this save replaced
            log_file = runtime.keep_log(log_file, log_path)
    if master:
        log_file.close()
    if master and "test" in data:  # the best epoch predicts
        raw_model.load_state_dict(runtime.load_checkpoint(ckpt_path)["model"])
        score(eval_model, {"test": data["test"]}, names, cfg.out_dir, pred_args, 0, 1, say)
    return {"best": best, "metric": metric_name, "history": history}


if __name__ == "__main__":
    runtime.run(main)

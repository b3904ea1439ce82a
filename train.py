"""
BERT pretraining: masked language model (MLM) and next sentence prediction (NSP), on one CPU, one GPU
or many (torchrun, one node or several).

    python train.py config/bert_tiny.py                  # CPU or laptop, minutes
    torchrun --nproc_per_node=8 train.py                 # BERT-base, the defaults below
    python train.py config/bert_tiny.py --init_from=resume   # continue out_dir/ckpt.pt exactly
    python train.py --help                               # every setting, its default and what it does
    python train.py --init_from=bert-folder --data_dir=data/mine-bert   # go on pretraining real BERT weights

Data comes from prepare.py: a uint16 token stream, document offsets and the vocabulary (GPT-2's, or
the tokenizer.json beside the bins), which sets the model's vocab_size and special ids; every
checkpoint carries it. Every batch is built on the fly (sentence pairs, dynamic masking) and is a
pure function of (seed, step, micro-step, rank), so a resumed run sees exactly the batches the
uninterrupted run would have seen without saving any data-loader state. Dropout is seeded from the
same numbers for each micro-batch, for the same reason.
A resumed run takes its settings from the checkpoint; the command line may change how it runs
(logging, evaluation, device, batch_size), extend max_steps or move on to longer sequences, never
the recipe (learning rate, seed, masking, model shape).
"""
import importlib.util
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

import runtime
import tokenizer as tokenization
from configurator import read_settings, require
from model import BertConfig, BertForPreTraining, gather_masked, looks_local, max_predictions_for, resolve_checkpoint

# -----------------------------------------------------------------------------
# Settings. The defaults are the BERT-base recipe (Devlin et al. 2018, appendix A.2) for
# `torchrun --nproc_per_node=8 train.py`; config/*.py files and --key=value flags override them.
# I/O
out_dir = "out"              # where ckpt.pt and log.jsonl go
init_from = "scratch"        # 'scratch', 'resume' (out_dir/ckpt.pt, with the settings it was trained with), or a HuggingFace BERT (folder or hub name) to go on pretraining on data prepared with its vocabulary
overwrite = False            # let a scratch run replace a checkpoint already in out_dir
eval_interval = 2000         # steps between evaluations; each one saves out_dir/ckpt.pt
eval_iters = 100             # validation batches per evaluation, the same ones every time
log_interval = 100           # steps between log lines (and between checks for SIGTERM/SIGINT)
run_steps = 0                # stop (and save) after this many steps of this run; 0: go on to max_steps
wandb_log = False            # also log to Weights & Biases (needs `pip install wandb`)
wandb_project = "bert"
wandb_run_name = "bert-base"
# data
data_dir = "data/wikipedia"  # prepare.py's output, e.g. python prepare.py --dataset wikimedia/wikipedia --config 20231101.en; its vocabulary is the model's
block_size = 512             # tokens per sequence, [CLS] and [SEP]s included
batch_size = 32              # sequences per micro-step and process
tokens_per_step = 256 * 512  # per optimizer step over all processes: BERT's 256 sequences of 512
nsp = True                   # sentence pairs with NSP; False: MLM only on text packed across documents
mask_prob = 0.15             # share of text tokens to predict; of those 80% [MASK], 10% random, 10% kept
whole_word_mask = False      # mask all BPE pieces of a word together
# model
n_layer = 12
n_head = 12
n_embd = 768
max_positions = 512          # rows of the position embedding; block_size may be shorter
dropout = 0.1
bias = True                  # biases in Linear and LayerNorm layers
init_std = 0.02              # std of the initial weights (BERT's); a narrow model learns sooner from a larger one
# AdamW
learning_rate = 1e-4         # peak, reached after warmup_steps
max_steps = 1_000_000
weight_decay = 0.01
beta1 = 0.9
beta2 = 0.999
grad_clip = 1.0              # clip the global gradient norm; 0 turns it off
# learning rate schedule
warmup_steps = 10_000
decay = "linear"             # 'linear' (BERT) or 'cosine'
min_lr = 0.0
# system
device = "auto"              # auto, cpu, cuda, mps
dtype = "auto"               # auto: bf16 where the GPU or CPU has it in hardware, else fp16 on a GPU, fp32 on a CPU; or float32, bfloat16, float16
compile = None               # torch.compile the model; None: where it pays, on CUDA (on a CPU a short run compiles longer than it saves)
seed = 1337
# -----------------------------------------------------------------------------

# what a resumed run may set anew, and says when it does: how it runs (logging, evaluation, device), where
# the data now lives, batch_size (for another number of processes: the same tokens_per_step in other
# micro-batches, though not the same rows, since rows are drawn per micro-batch), max_steps (to extend a
# run: the learning-rate decay stretches to the new end), and block_size with tokens_per_step (BERT's
# second phase: 90% of the steps at 128 tokens, then the rest at 512)
MAY_CHANGE_ON_RESUME = {"out_dir", "init_from", "overwrite", "eval_interval", "eval_iters", "log_interval",
                        "run_steps", "wandb_log", "wandb_project", "wandb_run_name", "data_dir", "batch_size",
                        "device", "dtype", "compile", "max_steps", "block_size", "tokens_per_step"}
THIS_RUN_ONLY = {"out_dir", "init_from", "overwrite", "run_steps"}  # never taken from a checkpoint


def check_settings(cfg, world_size=1):
    """Everything wrong with the settings, as messages (empty when they are fine). Types were checked
    when they were read; these are ranges, choices and how the settings fit together."""
    p = []
    if cfg.init_from not in ("scratch", "resume") and looks_local(cfg.init_from) and not os.path.isdir(cfg.init_from):
        p.append(f"init_from must be 'scratch', 'resume' or a HuggingFace BERT (a folder or a hub name); there is no "
                 f"folder {cfg.init_from} here")
    for name in ("eval_interval", "eval_iters", "log_interval", "batch_size", "tokens_per_step", "max_steps",
                 "n_layer", "n_head", "n_embd", "max_positions"):
        if getattr(cfg, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("run_steps", "warmup_steps", "weight_decay", "grad_clip", "min_lr", "seed"):
        if getattr(cfg, name) < 0:
            p.append(f"{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.block_size < 8:
        p.append(f"block_size={cfg.block_size} is too short for [CLS] A [SEP] B [SEP]; use 8 or more")
    if cfg.block_size > cfg.max_positions:
        p.append(f"block_size={cfg.block_size} is longer than the model's max_positions={cfg.max_positions}")
    if cfg.n_head >= 1 and cfg.n_embd % cfg.n_head:
        p.append(f"n_embd={cfg.n_embd} must be a multiple of n_head={cfg.n_head}")
    if not 0 < cfg.mask_prob <= 1:
        p.append(f"mask_prob must be in (0, 1]: the share of tokens to predict; got {cfg.mask_prob}")
    if not 0 <= cfg.dropout < 1:
        p.append(f"dropout must be in [0, 1), got {cfg.dropout}")
    if not 0 < cfg.init_std < 1:
        p.append(f"init_std must be in (0, 1), got {cfg.init_std}")
    if not 0 < cfg.learning_rate < math.inf:
        p.append(f"learning_rate must be positive and finite, got {cfg.learning_rate}")
    if cfg.min_lr > cfg.learning_rate:
        p.append(f"min_lr={cfg.min_lr} is above learning_rate={cfg.learning_rate}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            p.append(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.decay not in runtime.DECAYS:
        p.append(f"decay must be one of {', '.join(runtime.DECAYS)}, got {cfg.decay!r}")
    p.append(runtime.check_dtype(cfg.dtype))
    p.append(runtime.check_device(cfg.device))
    if not (cfg.compile is None or isinstance(cfg.compile, bool)):
        p.append(f"compile must be True, False or None (where it pays: on CUDA), got {cfg.compile!r}")
    per_micro_step = cfg.batch_size * cfg.block_size * world_size
    if per_micro_step > 0 and cfg.tokens_per_step % per_micro_step:
        p.append(f"tokens_per_step={cfg.tokens_per_step} is not a multiple of batch_size * block_size * processes = "
                 f"{cfg.batch_size} * {cfg.block_size} * {world_size} = {per_micro_step}: change tokens_per_step or batch_size")
    if not cfg.data_dir:
        p.append("data_dir is empty: point it at prepare.py's output")
    p.append(runtime.check_writable(cfg.out_dir))
    if cfg.wandb_log and importlib.util.find_spec("wandb") is None:
        p.append("wandb_log=True needs wandb: pip install wandb (or --wandb_log=False)")
    return p


def resumed_settings(cfg, given, ckpt, path, say=print):
    """The settings a checkpoint was trained with, and from the command line (`given`, from read_settings)
    only what MAY_CHANGE_ON_RESUME, which it says. A flag that contradicts the checkpoint stops the run and
    says which. A config file may change only how the run runs: the one it was started with is usually
    on the resume command line too, and its data_dir must not move the run onto another corpus."""
    from_files = {k for k, source in given.items() if source != "flag"}
    given = (set(given) - from_files) | (from_files & MAY_CHANGE_ON_RESUME - {"data_dir"})
    saved = ckpt["config"]
    clash = [k for k in sorted(given) if k in saved and k not in MAY_CHANGE_ON_RESUME and saved[k] != getattr(cfg, k)]
    if clash:
        raise SystemExit(f"{path} was trained with " + ", ".join(f"{k}={saved[k]!r}" for k in clash) + ", but this "
                         "command says " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in clash) + ". A resumed run "
                         "keeps its settings: drop those, or start a new run in another out_dir")
    changed = [k for k in sorted(given - THIS_RUN_ONLY) if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        say("resuming with " + ", ".join(f"{k}={getattr(cfg, k)!r} (was {saved[k]!r})" for k in changed))
    settings = vars(cfg) | {k: v for k, v in saved.items() if k in vars(cfg) and k not in given | THIS_RUN_ONLY}
    return type(cfg)(**settings)


# -----------------------------------------------------------------------------
# Data: prepare.py's bins, sentence pairs, packed text, dynamic masking

def check_data(data_dir):
    """prepare.py's meta.json for data_dir and its vocabulary (a tokenizer), or one clear message."""
    if not os.path.isdir(data_dir):
        raise SystemExit(f"data_dir={data_dir!r} does not exist: check the name, or prepare a corpus there first, e.g. "
                         f"`python prepare.py --files \"my_texts/*.txt\" --out_dir {data_dir}`")
    files = [f"{s}{ext}" for s in ("train", "val") for ext in (".bin", "_docs.npy")] + ["meta.json"]
    missing = [f for f in files if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise SystemExit(f"{data_dir} lacks {', '.join(missing)}: prepare a corpus first, e.g. "
                         f"`python prepare.py --out_dir {data_dir}` (see prepare.py --help), or point data_dir at one")
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{data_dir}/meta.json is unreadable ({e}): re-run prepare.py for this folder")
    if not isinstance(meta, dict):
        raise SystemExit(f"{data_dir}/meta.json is not prepare.py's (not a JSON object): re-run prepare.py")
    if meta.get("tokenizer", "gpt2") != "gpt2" and not os.path.isfile(os.path.join(data_dir, "tokenizer.json")):
        raise SystemExit(f"{data_dir} lacks tokenizer.json, the {meta.get('tokenizer')} vocabulary its bins were made "
                         "with: copy it back, or re-run prepare.py for this folder")
    tok = tokenization.from_data(data_dir, meta)
    want = dict(vocab_size=tok.rows, dtype="uint16", special_ids=tok.specials())
    wrong = {k: meta.get(k) for k, v in want.items() if meta.get(k) != v}
    if wrong:
        raise SystemExit(f"{data_dir}/meta.json does not match its vocabulary ({wrong}, expected "
                         f"{ {k: want[k] for k in wrong} }): re-run prepare.py for this folder")
    return meta, tok


class Corpus:
    """One split of prepare.py's output: {split}.bin, uint16 tokens with every document followed by EOT,
    and {split}_docs.npy, int64 offsets: document i is tokens[offs[i] : offs[i+1] - 1]. vocab: its
    tokenizer, whose specials the rows are built with."""

    def __init__(self, data_dir, split, vocab):
        self.vocab = vocab
        self.path = os.path.join(data_dir, f"{split}.bin")
        size = os.path.getsize(self.path)
        if size % 2:
            raise SystemExit(f"{self.path} has an odd number of bytes ({size:,}), so it is not uint16 tokens: it is "
                             "truncated or not from prepare.py; re-run prepare.py")
        n_tokens = size // 2
        try:
            offs = np.load(os.path.join(data_dir, f"{split}_docs.npy"), allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SystemExit(f"{data_dir}/{split}_docs.npy is unreadable ({type(e).__name__}): re-run prepare.py")
        if offs.dtype.kind not in "iu" or offs.ndim != 1 or len(offs) < 2 or offs[0] != 0 or offs[-1] != n_tokens or np.any(np.diff(offs) < 1):
            raise SystemExit(f"{data_dir}: {split}_docs.npy does not match {split}.bin: re-run prepare.py")
        ends = offs[1:][np.linspace(0, len(offs) - 2, min(len(offs) - 1, 10_000)).astype(np.int64)] - 1
        if np.any(self.tokens()[ends] != vocab.eot):  # a sample of documents is enough to catch mixed-up files
            raise SystemExit(f"{data_dir}: documents in {split}.bin do not end with EOT where {split}_docs.npy "
                             "says: the files are from different runs; re-run prepare.py")
        self.n_tokens = n_tokens
        self.start = offs[:-1]
        self.length = offs[1:] - offs[:-1] - 1  # text tokens of each document, EOT excluded
        # documents are drawn in proportion to their length, so every token is equally likely to be seen
        self.cum_any = np.cumsum(self.length)                                  # B segments: 1+ tokens
        self.cum_pair = np.cumsum(np.where(self.length >= 2, self.length, 0))  # A + B of one document

    def tokens(self):
        # a fresh memmap each batch: a long-lived one keeps every page it touched, and the process's memory grows
        return np.memmap(self.path, dtype=np.uint16, mode="r")

    def sample_docs(self, rng, n, cum):
        return np.searchsorted(cum, rng.integers(0, cum[-1], n), side="right")


def nsp_rows(corpus, rng, B, T):
    """B rows of [CLS] A [SEP] B [SEP] [PAD]..., each (B, T), and the NSP labels (B,).

    A window of up to T-3 tokens is taken from one document and cut at a random point into A and B.
    Label 0 (IsNext): B is the rest of the window, the text right after A. Label 1: B has the same
    length but comes from another document (from a random place in it). Nothing crosses a document
    boundary. A document shorter than the window gives a shorter pair, padded with [PAD] and masked
    out of attention; the random B gets the length the true B would have had, so length gives the
    label away only when the other document is shorter still. Segments are cut at token, not
    sentence, boundaries: the prepared bins do not record sentences."""
    if corpus.cum_pair[-1] == 0 or len(corpus.length) < 2:
        raise SystemExit("NSP needs at least two documents, one of them 2+ tokens long; use --nsp=False")
    n = T - 3
    d = corpus.sample_docs(rng, B, corpus.cum_pair)
    L = corpus.length[d]
    W = np.minimum(L, n)                                          # window = A + B
    s = corpus.start[d] + rng.integers(0, L - W + 1)              # window start
    a_len = rng.integers(1, W)                                    # 1 .. W-1: A and B both non-empty
    is_random = rng.random(B) < 0.5
    d2 = corpus.sample_docs(rng, B, corpus.cum_any)
    while np.any(same := d2 == d):
        d2[same] = corpus.sample_docs(rng, int(same.sum()), corpus.cum_any)
    L2 = corpus.length[d2]
    b_len = np.where(is_random, np.minimum(W - a_len, L2), W - a_len)
    b_start = np.where(is_random, corpus.start[d2] + rng.integers(0, np.maximum(L2 - (W - a_len), 0) + 1), s + a_len)

    t = np.arange(T)[None, :]                                     # (1, T)
    sep1 = 1 + a_len[:, None]                                     # (B, 1) position of the first [SEP]
    sep2 = sep1 + 1 + b_len[:, None]                              # and of the second
    in_a, in_b = (t >= 1) & (t < sep1), (t > sep1) & (t < sep2)
    src = np.where(in_a, s[:, None] + t - 1, b_start[:, None] + t - sep1 - 1)  # (B, T) index into the bin
    text = corpus.tokens()[np.where(in_a | in_b, src, 0)].astype(np.int64)
    v = corpus.vocab
    idx = np.where(in_a | in_b, text, v.pad)
    idx[:, 0] = v.cls
    idx[(t == sep1) | (t == sep2)] = v.sep
    token_type_ids = ((t > sep1) & (t <= sep2)).astype(np.int64)
    attention_mask = t <= sep2
    return idx, token_type_ids, attention_mask, is_random.astype(np.int64)


def packed_rows(corpus, rng, B, T):
    """B rows of [CLS] text [SEP] for MLM-only training: T-2 contiguous tokens from a random place in
    the stream, documents separated by [SEP] where the bin has EOT (RoBERTa's FULL-SENTENCES). No
    padding, so no attention mask."""
    n = T - 2
    if corpus.n_tokens < n:
        raise SystemExit(f"{corpus.path} holds {corpus.n_tokens} tokens, fewer than one sequence of {T}")
    start = rng.integers(0, corpus.n_tokens - n + 1, B)
    text = corpus.tokens()[start[:, None] + np.arange(n)].astype(np.int64)  # (B, T-2)
    v = corpus.vocab
    text[text == v.eot] = v.sep
    return np.concatenate([np.full((B, 1), v.cls), text, np.full((B, 1), v.sep)], axis=1)


def mask_tokens(idx, rng, mask_prob, max_predictions, vocab, words=None):
    """Dynamic masking (BERT section 3.1). idx (B, T) int64. In each row m = max(1, round(mask_prob *
    text tokens)) text tokens (vocab.is_text: never [CLS] [SEP] [PAD] EOT) are chosen; 80% become [MASK],
    10% a random text token, 10% stay. With words = vocab.word_boundaries(), whole words are chosen as in
    google-research/bert: words in random order, each taken if it still fits within m, until m is
    reached. Returns (inputs, labels); labels hold the original token where one was chosen, else -100."""
    B, T = idx.shape
    rows = np.arange(B)[:, None]
    is_text = vocab.is_text[idx]
    n_text = is_text.sum(1)
    m = np.minimum(np.maximum(np.rint(mask_prob * n_text), 1), np.minimum(n_text, max_predictions)).astype(np.int64)
    if words is None:
        keys = np.where(is_text, rng.random((B, T)), 2.0)  # non-text sorts last
        rank = np.empty((B, T), np.int64)
        rank[rows, keys.argsort(1)] = np.arange(T)
        chosen = rank < m[:, None]
    else:
        starts, ends_line = words
        prev = np.concatenate([np.full((B, 1), vocab.cls), idx[:, :-1]], 1)
        start = is_text & (starts[idx] | ends_line[prev] | ~vocab.is_text[prev])  # after [CLS], [SEP], EOT: a new word
        word = np.where(is_text, np.cumsum(start, 1) - 1, T)              # (B, T) word of each token; T: none
        length = np.zeros((B, T + 1), np.int64)
        np.add.at(length, (np.broadcast_to(rows, (B, T)), word), 1)
        order = np.where(length[:, :T] > 0, rng.random((B, T)), 2.0).argsort(1)  # (B, T) words in random order
        length = np.take_along_axis(length, order, 1)                     # (B, T) tokens of the j-th word drawn
        take = np.zeros((B, T + 1), bool)                                 # by word; column T: no word
        total = np.zeros(B, np.int64)
        for j in range(int(start.sum(1).max())):  # one step per word rank, all rows at once
            if np.all(total >= m):
                break
            fits = (length[:, j] > 0) & (total + length[:, j] <= m)
            take[np.arange(B), order[:, j]] = fits
            total += np.where(fits, length[:, j], 0)
        chosen = take[rows, word]
    u = rng.random((B, T))
    inputs = np.where(chosen & (u < 0.8), vocab.mask, idx)
    text_ids = vocab.text_ids()
    inputs = np.where(chosen & (u >= 0.8) & (u < 0.9), text_ids[rng.integers(0, len(text_ids), (B, T))], inputs)
    labels = np.where(chosen, idx, -100)
    return inputs, labels


def batch_rng(seed, split, step, shard):
    """The generator for one micro-batch. shard = micro_step * world_size + rank, so one process with
    k micro-steps sees the same global batch as k processes with one micro-step each."""
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split], step, shard])


def dropout_seed(seed, step, shard):
    """torch's seed for the dropout of one micro-batch: like its data, a function of (step, shard)."""
    return int(np.random.SeedSequence([seed, 2, step, shard]).generate_state(1)[0])


def get_batch(corpus, rng, batch_size, block_size, nsp, mask_prob, max_predictions, words=None):
    """A pretraining micro-batch: the keyword arguments of BertForPreTraining.forward, as CPU tensors."""
    if nsp:
        idx, token_type_ids, attention_mask, nsp_labels = nsp_rows(corpus, rng, batch_size, block_size)
    else:
        idx, token_type_ids, attention_mask, nsp_labels = packed_rows(corpus, rng, batch_size, block_size), None, None, None
    inputs, labels = mask_tokens(idx, rng, mask_prob, max_predictions, corpus.vocab, words)
    t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))
    return dict(idx=t(inputs), token_type_ids=t(token_type_ids), attention_mask=t(attention_mask),
                mlm_labels=t(labels), nsp_labels=t(nsp_labels))


# -----------------------------------------------------------------------------
# Metrics

METRICS = ("mlm_loss_sum", "mlm_correct", "mlm_count", "nsp_loss_sum", "nsp_correct", "nsp_count")


def batch_metrics(mlm_logits, nsp_logits, batch, max_predictions):
    """Sums (not means) of the six METRICS for a batch, so batches and processes add up exactly."""
    _, y = gather_masked(batch["mlm_labels"], max_predictions)  # (B, P), lined up with mlm_logits
    keep = y != -100
    mlm_loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100, reduction="sum")
    mlm_correct = ((mlm_logits.argmax(-1) == y) & keep).sum()  # not [keep]: a masked select waits for the GPU
    sums = [mlm_loss, mlm_correct, keep.sum()]
    if batch["nsp_labels"] is None:
        sums += [torch.zeros((), device=y.device)] * 3
    else:
        z = batch["nsp_labels"]
        sums += [F.cross_entropy(nsp_logits.float(), z, reduction="sum"), (nsp_logits.argmax(-1) == z).sum(),
                 torch.full((), z.numel(), device=y.device)]  # made on the device: no copy that waits
    return torch.stack([s.detach().float() for s in sums])


def summarize(sums, prefix=""):
    """Losses and accuracies from summed METRICS; NSP entries only when there were NSP rows."""
    s = dict(zip(METRICS, sums.tolist()))
    out = {f"{prefix}mlm_loss": s["mlm_loss_sum"] / max(s["mlm_count"], 1),
           f"{prefix}mlm_acc": s["mlm_correct"] / max(s["mlm_count"], 1)}
    if s["nsp_count"]:
        out.update({f"{prefix}nsp_loss": s["nsp_loss_sum"] / s["nsp_count"],
                    f"{prefix}nsp_acc": s["nsp_correct"] / s["nsp_count"]})
    out[f"{prefix}loss"] = out[f"{prefix}mlm_loss"] + out.get(f"{prefix}nsp_loss", 0.0)
    return out


def format_metrics(m, prefix=""):
    parts = [f"loss {m[prefix + 'loss']:.4f}", f"mlm {m[prefix + 'mlm_loss']:.4f}", f"mlm acc {m[prefix + 'mlm_acc']:.1%}"]
    if prefix + "nsp_loss" in m:
        parts += [f"nsp {m[prefix + 'nsp_loss']:.4f}", f"nsp acc {m[prefix + 'nsp_acc']:.1%}"]
    return " | ".join(parts)


def train_batch(corpus, cfg, split, step, shard, P, words, device):
    """Micro-batch `shard` of `step` on device: the keyword arguments of BertForPreTraining.forward."""
    b = get_batch(corpus, batch_rng(cfg.seed, split, step, shard), cfg.batch_size, cfg.block_size, cfg.nsp,
                  cfg.mask_prob, P, words)
    return runtime.to_device(b, device)


@torch.no_grad()
def evaluate(model, corpus, cfg, P, words, ctx, device, rank=0, world_size=1):
    """Validation metrics over the same eval_iters batches every time, split over the processes."""
    model.eval()
    sums = torch.zeros(len(METRICS), device=device)
    for k in range(rank, cfg.eval_iters, world_size):
        b = train_batch(corpus, cfg, "val", 0, k, P, words, device)
        with ctx:
            mlm_logits, nsp_logits, _ = model(**b, max_predictions=P)
        sums += batch_metrics(mlm_logits, nsp_logits, b, P)
    if world_size > 1:
        torch.distributed.all_reduce(sums)
    model.train()
    return summarize(sums, "val_")


def same_vocabulary(theirs, ours, what, data_dir, hint):
    """Stop unless the model (`theirs`: a checkpoint's or a HuggingFace folder's vocabulary) and the data
    (`ours`) share one vocabulary: the same ids must mean the same tokens."""
    if theirs.identity() != ours.identity():
        raise SystemExit(f"{what} has another vocabulary ({theirs.name}, {theirs.n_ids:,} ids) than {data_dir} was "
                         f"prepared with ({ours.name}, {ours.n_ids:,} ids): {hint}")


def from_huggingface(cfg, vocab, say):
    """The HuggingFace BERT that init_from names, with its heads, to go on pretraining on cfg.data_dir (domain-
    adaptive pretraining, Gururangan et al. 2020). Its shape replaces the settings' (n_layer and the rest)."""
    try:
        folder = resolve_checkpoint(cfg.init_from)  # a hub name is downloaded
        same_vocabulary(tokenization.get_tokenizer(folder), vocab, cfg.init_from, cfg.data_dir,
                        f"prepare the corpus with its vocabulary, `python prepare.py ... --tokenizer={folder}`")
        model = BertForPreTraining.from_pretrained(folder)
    except (ValueError, ImportError) as e:
        raise SystemExit(str(e))
    c = model.config
    if cfg.block_size > c.max_positions:
        raise SystemExit(f"block_size={cfg.block_size} is longer than {cfg.init_from}'s {c.max_positions} positions")
    say(f"from {cfg.init_from}: its weights, shape and vocabulary (n_layer, n_head, n_embd, max_positions, dropout "
        "and bias come from its config.json)")
    shape = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, max_positions=c.max_positions,
                 dropout=c.dropout, bias=c.bias)
    return model, type(cfg)(**vars(cfg) | shape)


def open_log(path, resume_step, ckpt_path):
    """log.jsonl for appending (runtime.open_log). A resumed run first drops the lines written after its
    checkpoint (it does those steps again); a fresh run starts an empty log."""
    kept = []
    if resume_step is not None and os.path.isfile(path):
        kept = [r for r in runtime.read_log(path) if r["step"] <= resume_step]
    return runtime.open_log(path, resume_step is None and os.path.exists(ckpt_path), kept)


def main(argv=None):
    """Pretrain with the settings above, overridden by argv (config files, --key=value). Returns the
    trained BertForPreTraining (the plain module)."""
    cfg, given = read_settings(globals(), argv)
    ddp, rank, local_rank, world_size = runtime.init_distributed()
    master = rank == 0
    say = print if master else (lambda *a, **k: None)

    # settings, all checked before any work; a resumed run takes them from its checkpoint
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    if cfg.init_from == "resume":
        ckpt = runtime.load_checkpoint(ckpt_path, kinds=("pretraining",))
        cfg = resumed_settings(cfg, given, ckpt, ckpt_path, say)
    require(check_settings(cfg, world_size))
    if cfg.init_from != "resume" and not cfg.overwrite and os.path.exists(ckpt_path):
        ours = runtime.load_checkpoint(ckpt_path)["kind"] == "pretraining"
        runtime.refuse_overwrite(ckpt_path, "a pretraining checkpoint" if ours else "a fine-tuned checkpoint",
                                 "continue it with --init_from=resume, " if ours else "")
    grad_accum = cfg.tokens_per_step // (cfg.batch_size * cfg.block_size * world_size)
    say(f"tokens per step: {cfg.tokens_per_step:,} = batch_size {cfg.batch_size} x block_size {cfg.block_size} "
        f"x grad_accum {grad_accum} x world_size {world_size}")
    device, device_type, ctx, scaler = runtime.setup(cfg.device, cfg.dtype, local_rank)

    # data, and its vocabulary, which is the model's
    _, vocab = check_data(cfg.data_dir)
    train_data, val_data = Corpus(cfg.data_dir, "train", vocab), Corpus(cfg.data_dir, "val", vocab)
    words = vocab.word_boundaries() if cfg.whole_word_mask else None
    P = max_predictions_for(cfg.block_size, cfg.mask_prob)

    # model and optimizer: fresh, from the checkpoint, or HuggingFace weights to go on pretraining
    torch.manual_seed(cfg.seed)  # the same initial weights on every process and every run
    if ckpt:
        same_vocabulary(tokenization.for_checkpoint(ckpt, cfg.out_dir), vocab, ckpt_path, cfg.data_dir,
                        "point data_dir at a folder prepared with its vocabulary (prepare.py --tokenizer=<the "
                        "tokenizer.json of the data it was trained on>)")
        raw_model = BertForPreTraining(BertConfig(**ckpt["model_config"]))
    elif cfg.init_from != "scratch":
        raw_model, cfg = from_huggingface(cfg, vocab, say)
    else:
        raw_model = BertForPreTraining(BertConfig(
            max_positions=cfg.max_positions, vocab_size=vocab.rows, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias, init_std=cfg.init_std))
    model_config = raw_model.config
    raw_model.to(device)
    if not cfg.nsp:  # without NSP rows the pooler and NSP head get no gradient, which DDP does not allow: freeze them
        raw_model.bert.pooler.requires_grad_(False)
        raw_model.nsp.requires_grad_(False)
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    step, best_val_loss = 0, float("inf")
    if ckpt:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and scaler.is_enabled():  # fp16 before and now; otherwise a fresh scale
            scaler.load_state_dict(ckpt["scaler"])
        step, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
        say(f"resuming from {ckpt_path} at step {step}, with the settings it was trained with")
        del ckpt
    say(f"{raw_model.num_params() / 1e6:.2f}M parameters, {model_config.n_layer} layers x {model_config.n_embd} "
        f"wide; up to {P} masked tokens per sequence; {runtime.precision(ctx)} on {device}")
    model, eval_model = runtime.wrap(raw_model, cfg.compile, ddp, device_type, local_rank)
    if master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        log_path = os.path.join(cfg.out_dir, "log.jsonl")
        log_file = open_log(log_path, step if step else None, ckpt_path)
        wandb = None
        if cfg.wandb_log:
            import wandb  # optional: only runs that log to wandb need it
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=vars(cfg))

    # the loop: evaluate (and save) every eval_interval steps, log every log_interval steps
    start_step = step
    stop_at = min(cfg.max_steps, start_step + cfg.run_steps) if cfg.run_steps else cfg.max_steps
    if start_step >= stop_at:
        say(f"{ckpt_path} is at step {step}, the end of this run (max_steps={cfg.max_steps}): nothing to do. "
            f"To train on, resume with a larger --max_steps")
        if master:
            log_file.close()
        return raw_model
    stop, stopping = runtime.StopSignal(), False
    try:
        b = train_batch(train_data, cfg, "train", step, rank, P, words, device)
        t_log, steps_logged = time.time(), 0
        while True:
            # every eval_interval steps and at the end: evaluate, then save; on a signal: save, then stop
            at_eval = step % cfg.eval_interval == 0 or step >= stop_at
            if at_eval and not step == start_step > 0:  # the run a resumed one continues evaluated this step
                m = evaluate(eval_model, val_data, cfg, P, words, ctx, device, rank, world_size)
                if not math.isfinite(m["val_loss"]):
                    raise runtime.diverged(f"validation loss is {m['val_loss']} at step {step}", ckpt_path)
                best_val_loss = min(best_val_loss, m["val_loss"])
                say(f"eval step {step}: {format_metrics(m, 'val_')}")
                if master:
                    runtime.write_log(log_file, {"step": step, "tokens": step * cfg.tokens_per_step, **m}, wandb)
            if step > start_step and (at_eval or stopping):
                if not runtime.all_finite(raw_model):  # the same weights on every process: all of them stop
                    raise runtime.diverged(f"the weights hold NaN/inf at step {step}", ckpt_path)
                if master:
                    runtime.save_checkpoint(dict(
                        kind="pretraining", model=raw_model.state_dict(), model_config=asdict(model_config),
                        optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), step=step,
                        best_val_loss=best_val_loss, config=vars(cfg), **tokenization.carried(vocab)), ckpt_path)
                    say(f"saved {ckpt_path} at step {step}")
                    log_file = runtime.keep_log(log_file, log_path)
            if step >= stop_at or stopping:
                break
            if at_eval:
                t_log, steps_logged = time.time(), 0  # leave evaluation out of the step timing

            lr = runtime.get_lr(step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr, cfg.decay)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for micro in range(grad_accum):
                torch.manual_seed(dropout_seed(cfg.seed, step, micro * world_size + rank))
                # gradients are all-reduced on the last micro-step only
                with model.no_sync() if ddp and micro < grad_accum - 1 else nullcontext():
                    with ctx:
                        mlm_logits, nsp_logits, loss = model(**b, max_predictions=P)
                    last_batch = b
                    # the next micro-batch is built on the CPU while the GPU works on this one
                    nxt_step, nxt_micro = (step, micro + 1) if micro + 1 < grad_accum else (step + 1, 0)
                    b = train_batch(train_data, cfg, "train", nxt_step, nxt_micro * world_size + rank, P, words, device)
                    scaler.scale(loss / grad_accum).backward()
            runtime.optimizer_step(optimizer, scaler, raw_model.parameters(), cfg.grad_clip)
            step += 1
            steps_logged += 1

            if step % cfg.log_interval == 0 or step == stop_at:
                # with compile=True the only host-device sync outside evaluation (an eager model also syncs
                # once per forward to check its token ids); all processes agree on NaN and on stopping
                m = summarize(batch_metrics(mlm_logits, nsp_logits, last_batch, P))
                stopping, bad = runtime.any_process([stop.requested, not math.isfinite(m["loss"])], device, ddp)
                if bad:
                    raise runtime.diverged(f"loss is NaN/inf at step {step}", ckpt_path)
                dt = (time.time() - t_log) / steps_logged
                tokens_per_sec = cfg.tokens_per_step / dt
                mfu = raw_model.estimate_mfu(tokens_per_sec / world_size, cfg.block_size, device_type,
                                             mlm_fraction=P / cfg.block_size)
                say(f"step {step} | {format_metrics(m)} | lr {lr:.2e} | {dt * 1000:.0f} ms/step | "
                    f"{tokens_per_sec:,.0f} tok/s | mfu {'n/a' if mfu is None else f'{mfu:.1%}'}", flush=True)
                if master:
                    runtime.write_log(log_file, {"step": step, "tokens": step * cfg.tokens_per_step, **m, "lr": lr,
                                                 "ms_per_step": dt * 1000, "tokens_per_sec": tokens_per_sec, "mfu": mfu},
                                      wandb)
                t_log, steps_logged = time.time(), 0
    finally:
        stop.restore()
        if master:
            log_file.close()
    if stopping:  # not finished: a non-zero exit, so that `train.py && finetune.py` stops here
        say(f"stopped at step {step} of {stop_at} on a signal; {ckpt_path} is saved. Continue with the same "
            "command and --init_from=resume")
        raise SystemExit(stop.exit_code)
    say(f"done: step {step}{' = max_steps' if step == cfg.max_steps else ''}, {ckpt_path} saved")
    return raw_model


if __name__ == "__main__":
    runtime.run(main)

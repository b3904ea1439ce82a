"""
Fill in [MASK]s with a pretrained BERT: one of ours (out_dir/ckpt.pt, with the vocabulary it carries) or
HuggingFace weights.

    python sample.py --text "the [MASK] sat on the mat."
    python sample.py --out_dir=out-tiny --text "one [MASK] three" --text "[MASK] is the capital of France."
    python sample.py --file=sentences.txt --top_k=10          # one text per line
    python sample.py --init_from=bert-base-uncased --text "paris is the [MASK] of france."

With a byte-level BPE (GPT-2's or one trained by prepare.py) a [MASK] stands for one whole token
including the space before it (" cat" is one token), exactly as in pretraining: "the [MASK] sat" is
encoded as "the", [MASK], " sat".
"""
import argparse
import glob
import os

import torch

import runtime
import tokenizer as tokenization
from model import BertForPreTraining, resolve_checkpoint


def load_model(out_dir="out", init_from=None, device="cpu"):
    """Our checkpoint in out_dir, or a HuggingFace BERT (hub name or local folder) if init_from is set.
    Returns (model in eval mode on device, the tokenizer that matches it)."""
    if init_from and os.path.isfile(runtime.checkpoint_path(init_from)):
        out_dir, init_from = init_from, None  # a run of ours, named the way finetune.py names one
    if init_from:
        try:
            folder = resolve_checkpoint(init_from)  # downloads a hub name; clear error offline
            model = BertForPreTraining.from_pretrained(folder)
        except (ValueError, ImportError) as e:
            raise SystemExit(str(e))
        tok = tokenization.get_tokenizer(folder)
    else:
        ckpt = runtime.load_checkpoint(out_dir, kinds=("pretraining",))  # a fine-tuned model has no MLM head
        model = runtime.model_from_checkpoint(ckpt, out_dir)
        tok = tokenization.for_checkpoint(ckpt, runtime.run_folder(out_dir))
    if tok.n_ids > model.config.vocab_size:
        raise SystemExit(f"tokenizer has {tok.n_ids} ids but the model only {model.config.vocab_size}")
    model.eval()
    return model.to(device), tok


def encode_texts(tok, texts, block_size, where=None):
    """[CLS] text [SEP] for each text, with one clear message for a text that cannot be filled in.
    where: a label for each text in messages (e.g. 'line 3 of in.txt'); default 'text 1', 'text 2'..."""
    where = where or [f"text {i + 1}" for i in range(len(texts))]
    rows = []
    for text, w in zip(texts, where):
        ids = [tok.cls] + tok.encode_masked(text) + [tok.sep]
        if tok.mask not in ids:
            raise SystemExit(f"{w} has no {tokenization.MASK_TOKEN} to fill in: {text!r}")
        if len(ids) > block_size:
            raise SystemExit(f"{w} is {len(ids)} tokens with [CLS] and [SEP], more than this model's "
                             f"max_positions={block_size}: shorten it")
        rows.append(ids)
    return rows


@torch.no_grad()
def fill_mask(model, tok, rows, top_k=5, batch_size=32):
    """rows: token id lists from encode_texts. Every [MASK] of a row is predicted in the same forward
    pass, each independently of the guesses for the others. Only text tokens can win: no specials,
    no padding ids, no unused rows of a padded vocabulary.
    Returns per row a list (one entry per mask, left to right) of (ids, probs), each of length top_k,
    probabilities taken over the text tokens only."""
    device = next(model.parameters()).device
    V = model.config.vocab_size
    not_text = torch.from_numpy(~tok.text_mask(V)).to(device)
    top_k = min(top_k, V - int(not_text.sum()))
    out = []
    for b in range(0, len(rows), batch_size):
        batch = rows[b:b + batch_size]
        T = max(len(r) for r in batch)
        idx = torch.full((len(batch), T), tok.pad, dtype=torch.long)
        for i, r in enumerate(batch):
            idx[i, :len(r)] = torch.tensor(r)
        idx = idx.to(device)
        lengths = torch.tensor([len(r) for r in batch], device=device)
        attention_mask = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (B, T), False = padding
        is_mask = idx == tok.mask
        # the labels only tell the MLM head which positions to decode (sparse, P per row); its loss is unused
        labels = torch.where(is_mask, 0, -100)
        P = int(is_mask.sum(1).max())
        logits, _, _ = model(idx, attention_mask=attention_mask, mlm_labels=labels, max_predictions=P)  # (B, P, V)
        logits = logits.float().masked_fill(not_text, float("-inf"))
        probs, ids = logits.softmax(-1).topk(top_k, dim=-1)  # (B, P, k)
        for i, n in enumerate(is_mask.sum(1).tolist()):  # slot j of row i is its j-th mask, for j < n
            out.append([(ids[i, j].tolist(), probs[i, j].tolist()) for j in range(n)])
    return out


def token_str(tok, i):
    # repr shows the leading space (' cat' vs 'cat') and any stray bytes of a split utf-8 character
    return repr(tok.decode([i]))


def fill_in(tok, row, preds):
    """The row's text (no [CLS]/[SEP]) with each [MASK] replaced by its best guess."""
    best = iter(p[0][0] for p in preds)
    return tok.decode([next(best) if i == tok.mask else i for i in row[1:-1]])


def printable(s):
    # a guessed "\n" or "\t" shows as an escape and keeps each result on its own lines
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def format_result(tok, text, row, preds):
    lines = [f"> {printable(text)}"]
    for j, (ids, probs) in enumerate(preds):
        guesses = "  ".join(f"{token_str(tok, i)} {p:.3f}" for i, p in zip(ids, probs))
        lines.append(f"  [MASK] {j + 1}: {guesses}")
    lines.append(f"  filled: {printable(fill_in(tok, row, preds))}")
    return "\n".join(lines)


def default_out_dir():
    """'out' if it holds a checkpoint; else the one out*/ folder here that does, such as the out-tiny of
    `python train.py config/bert_tiny.py`."""
    if os.path.isfile(os.path.join("out", "ckpt.pt")):
        return "out"
    found = sorted(os.path.dirname(p) for p in glob.glob("out*/ckpt.pt"))
    if len(found) == 1:
        print(f"(reading {found[0]}/ckpt.pt, the one checkpoint here; --out_dir chooses another)")
        return found[0]
    if found:
        raise SystemExit(f"no checkpoint in out/, and several elsewhere: choose one with --out_dir ({', '.join(found)})")
    return "out"  # and load_checkpoint says how to make one


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Fill in [MASK]s with a pretrained BERT. All masks of a text are predicted in one "
                    "forward pass, as independent guesses: each is the model's best for its slot given "
                    "the other slots still masked, so the filled-in sentence need not be the best "
                    "sentence overall.")
    parser.add_argument("--text", action="append", default=[],
                        help="a text with one or more [MASK]s; repeat the flag for several texts")
    parser.add_argument("--file", help="read texts from this file, one per line (blank lines skipped)")
    parser.add_argument("--top_k", type=int, default=5, help="guesses shown per mask (default 5)")
    parser.add_argument("--out_dir", default=None,
                        help="folder with our ckpt.pt (default: 'out', or the one out*/ folder here that holds one)")
    parser.add_argument("--init_from", default=None,
                        help="a HuggingFace BERT instead: hub name (bert-base-uncased) or local folder")
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, ...")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per forward pass")
    args = parser.parse_args(argv)

    texts, where = list(args.text), [f"--text {i + 1}" for i in range(len(args.text))]
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise SystemExit(f"cannot read --file {args.file}: {e.strerror}")
        except UnicodeDecodeError:
            raise SystemExit(f"--file {args.file} is not UTF-8 text")
        for n, line in enumerate(lines, 1):
            if line.strip():
                texts.append(line)
                where.append(f"line {n} of {args.file}")
    if not texts:
        parser.error('give a text to fill in: --text "the [MASK] sat on the mat." or --file=texts.txt')
    if args.top_k < 1:
        parser.error("--top_k must be at least 1")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    device = runtime.pick_device(args.device)
    out_dir = args.out_dir or (None if args.init_from else default_out_dir())

    model, tok = load_model(out_dir, args.init_from, device)
    rows = encode_texts(tok, texts, model.config.max_positions, where)
    preds = fill_mask(model, tok, rows, args.top_k, args.batch_size)
    print("\n\n".join(format_result(tok, t, r, p) for t, r, p in zip(texts, rows, preds)))


if __name__ == "__main__":
    runtime.run(main)

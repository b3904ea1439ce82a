"""
Export one of our checkpoints as a HuggingFace folder, which transformers loads with its Auto classes
and no code from this repository.

    python export.py --init_from=out-tiny --out_dir=hf-tiny   # train.py's run: BertForPreTraining
    python export.py --init_from=out-sst2                     # finetune.py's run: BertForSequenceClassification

    from transformers import pipeline
    pipeline("fill-mask", model="hf-tiny")("the [MASK] sat on the mat.")

The folder holds config.json, model.safetensors, the tokenizer and a model card (README.md: data,
steps, tokens and validation metrics, from the checkpoint and the log.jsonl beside it). The tokenizer
is the one the checkpoint carries, giving the ids tokenizer.py gives: GPT-2's as a tokenizer.json
built here from tiktoken's encoding, a vocabulary trained by prepare.py as its own tokenizer.json, a
HuggingFace BERT's WordPiece as its vocab.txt. BertForPreTraining.from_pretrained(out_dir) in model.py loads the weights back
bit for bit.
"""
import json
import os

import torch

import runtime
import tokenizer as tokenization
from configurator import read_settings, require
from model import SAFETENSORS_DTYPES, to_hf_state_dict

# -----------------------------------------------------------------------------
# What to export, and where
init_from = "out"            # a run folder holding ckpt.pt, from train.py or finetune.py (or the ckpt.pt)
out_dir = ""                 # the HuggingFace folder to write; "" for <init_from>-hf
overwrite = False            # replace what out_dir already holds
# -----------------------------------------------------------------------------

FILES = ("model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "README.md", "config.json")


def check_settings(cfg, out_dir, run_dir):
    """What is wrong with the settings, as messages; checked before the checkpoint is read."""
    p = [runtime.check_writable(out_dir)]
    if os.path.realpath(out_dir) == os.path.realpath(run_dir):
        p.append(f"out_dir={out_dir!r} is the run folder itself: write the export to a folder of its own")
    elif os.path.isdir(out_dir) and os.listdir(out_dir) and not cfg.overwrite:
        held = sorted(os.listdir(out_dir))
        p.append(f"out_dir={out_dir!r} already holds {', '.join(held[:5])}{' ...' if len(held) > 5 else ''}: "
                 "choose another out_dir, or pass --overwrite=True to replace it")
    return p


def check_checkpoint(ckpt, path, run_dir):
    """Everything that keeps a checkpoint from exporting, as messages."""
    p = []
    tok = ckpt.get("tokenizer", "gpt2")
    if ckpt["kind"] == "finetuning" and ckpt.get("pooling", "cls") != "cls":
        p.append(f"{path} was fine-tuned with pooling={ckpt['pooling']!r}: transformers' BertForSequenceClassification "
                 "classifies the pooled [CLS] vector only, so no HuggingFace class computes this model. "
                 "Fine-tune with pooling='cls' to export it")
    if not ckpt["model_config"].get("bias", True):
        p.append(f"{path} has no biases (bias=False); HuggingFace's BERT always has them")
    if tok not in ("gpt2", "wordpiece", "tokenizer.json"):
        p.append(f"{path}: tokenizer {tok!r} is not one export.py knows (gpt2, wordpiece or tokenizer.json)")
    if tok == "gpt2" and ckpt["model_config"].get("vocab_size", 0) < tokenization.GPT2Tokenizer.n_ids:
        p.append(f"{path} has {ckpt['model_config'].get('vocab_size')} embedding rows, too few for our GPT-2 "
                 "vocabulary")
    files = {"wordpiece": ("vocab.txt",), "tokenizer.json": ("tokenizer.json",)}.get(tok, ())
    for f in files if "tokenizer_json" not in ckpt else ():  # older fine-tuned checkpoints keep it beside them
        if not os.path.isfile(os.path.join(run_dir, f)):
            p.append(f"{path} does not carry its vocabulary, and {run_dir} lacks the {f} that finetune.py wrote "
                     "beside ckpt.pt")
    if not os.path.isfile(os.path.join(run_dir, "log.jsonl")):
        p.append(f"{run_dir} has no log.jsonl beside ckpt.pt: the model card reports the run from it. Export from "
                 "the run folder that train.py or finetune.py wrote")
    return p


# -----------------------------------------------------------------------------
# The weights and the config

def safetensors_writer(tensors):
    """A write(path) for the safetensors format, which model.py reads: the header's length (8 bytes,
    little-endian), a JSON header of names, dtypes, shapes and byte ranges, then the raw bytes."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    tensors = {k: t.detach().cpu().contiguous() for k, t in sorted(tensors.items())}
    header, offset = {"__metadata__": {"format": "pt"}}, 0  # transformers wants to know the framework
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the tensor data starts 8-byte aligned

    def write(path):
        with open(path, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            for t in tensors.values():
                f.write(t.reshape(-1).view(torch.uint8).numpy().data)  # no copy
    return write


def hf_config(ckpt, config, pad_id):
    """config.json: the fields model.py's _config_from_hf reads back, and the head."""
    c = config
    hf = {"architectures": ["BertForPreTraining" if ckpt["kind"] == "pretraining" else "BertForSequenceClassification"],
          "model_type": "bert", "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer,
          "num_attention_heads": c.n_head, "intermediate_size": c.ffn, "hidden_act": "gelu",  # exact erf GELU
          "max_position_embeddings": c.max_positions, "position_embedding_type": "absolute",
          "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.layer_norm_eps,
          "hidden_dropout_prob": c.dropout, "attention_probs_dropout_prob": c.dropout, "initializer_range": c.init_std,
          "pad_token_id": pad_id, "tie_word_embeddings": True, "dtype": "float32"}
    if ckpt["kind"] == "finetuning":
        names = ckpt["labels"] or ["LABEL_0"]  # regression: one output, under transformers' default name
        hf["problem_type"] = "single_label_classification" if ckpt["labels"] else "regression"
        hf["id2label"] = {str(i): str(name) for i, name in enumerate(names)}
        hf["label2id"] = {str(name): i for i, name in enumerate(names)}
    return hf


# -----------------------------------------------------------------------------
# The tokenizer

def bpe(ranks, token, max_rank):
    """token's bytes merged as tiktoken merges them (the adjacent pair whose join ranks lowest, first),
    with only the tokens ranked below max_rank."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = max_rank, -1
        for i in range(len(parts) - 1):  # a plain loop: 50,000 tokens take 0.6 s, against 1.6 s with min()
            r = ranks.get(parts[i] + parts[i + 1], max_rank)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return parts


def gpt2_vocab_and_merges(enc):
    """GPT-2's vocab.json and merges.txt, rebuilt from tiktoken's ranks (token id = rank). The merge that
    makes a token is the pair that BPE reaches with the tokens ranked below it: this gives back the
    published merges.txt, line for line."""
    ranks = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
    u = tokenization.bytes_to_unicode()
    text = lambda b: "".join(u[x] for x in b)
    merges = [[text(p) for p in bpe(ranks, token, r)] for token, r in sorted(ranks.items(), key=lambda kv: kv[1])
              if len(token) > 1]
    assert all(len(m) == 2 for m in merges)
    return {text(b): r for b, r in ranks.items()}, merges


def gpt2_tokenizer_json(tok):
    """GPT-2 as a tokenizer.json, with the ids tokenizer.py gives: byte-level BPE and our specials."""
    vocab, merges = gpt2_vocab_and_merges(tok.enc)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, s in sorted(tok.names.items())]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        # ByteLevel's regex is GPT-2's, the pattern of tiktoken's gpt2 encoding
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        # ignore_merges: a pre-token that is a whole vocabulary entry is that token, as in tiktoken
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def fast_tokenizer_files(spec, tok, max_positions, fill_mask):
    """tokenizer.json and tokenizer_config.json for transformers' fast tokenizer, encoding as tokenizer.py
    does: [CLS] A [SEP] (B [SEP]), token type 1 for B. spec: the vocabulary's tokenizer.json as a dict.
    fill_mask (a pretraining export): "[MASK]" in the text is the mask and, in a byte-level vocabulary,
    takes one space before it, as encode_masked does. The other specials follow transformers' rule:
    written in the text, they are those tokens. Else (a classifier) every special written in the text is
    plain text, as in finetune.py."""
    name = {i: t for t, i in tok.tok.get_vocab(with_added_tokens=True).items()} if hasattr(tok, "tok") else tok.names
    spec = {**spec, "truncation": None, "padding": None}
    if fill_mask and spec["normalizer"] is None:  # byte-level: the text is not normalised otherwise
        # one space before a [MASK] goes (lstrip=True would take tabs, newlines and runs of spaces too);
        # [MASK] is then found in the normalized text, the other specials in the raw text
        spec["normalizer"] = {"type": "Replace", "pattern": {"String": " " + tokenization.MASK_TOKEN},
                              "content": tokenization.MASK_TOKEN}
        spec["added_tokens"] = [{**t, "normalized": t["content"] == tokenization.MASK_TOKEN} for t in spec["added_tokens"]]
    seq = lambda part, type_id: {"Sequence": {"id": part, "type_id": type_id}}
    special = lambda i, type_id: {"SpecialToken": {"id": name[i], "type_id": type_id}}
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special(tok.cls, 0), seq("A", 0), special(tok.sep, 0)],
        "pair": [special(tok.cls, 0), seq("A", 0), special(tok.sep, 0), seq("B", 1), special(tok.sep, 1)],
        "special_tokens": {name[i]: {"id": name[i], "ids": [i], "tokens": [name[i]]} for i in (tok.cls, tok.sep)}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "cls_token": name[tok.cls], "sep_token": name[tok.sep],
              "mask_token": name[tok.mask], "pad_token": name[tok.pad], "model_max_length": max_positions,
              "split_special_tokens": not fill_mask, "padding_side": "right", "clean_up_tokenization_spaces": False,
              "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
    return {"tokenizer.json": json.dumps(spec, ensure_ascii=False).encode(), "tokenizer_config.json": to_json(config)}


def wordpiece_tokenizer_files(tok, max_positions, fill_mask):
    """A BERT's own vocab.txt, with the casing it was used with, for transformers' BertTokenizer. Specials
    written in the text as fast_tokenizer_files has them: text in a classifier, tokens in fill-mask."""
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": tok.lowercase, "model_max_length": max_positions,
              "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
              "pad_token": "[PAD]", "tokenize_chinese_chars": True, "strip_accents": None,
              "split_special_tokens": not fill_mask}
    return {"vocab.txt": tok.vocab_txt(), "tokenizer_config.json": to_json(config)}


def tokenizer_files(tok, max_positions, fill_mask):
    """The checkpoint's vocabulary as transformers reads it."""
    if tok.name == "wordpiece":
        return wordpiece_tokenizer_files(tok, max_positions, fill_mask)
    spec = gpt2_tokenizer_json(tok) if tok.name == "gpt2" else json.loads(tok.tok.to_str())
    return fast_tokenizer_files(spec, tok, max_positions, fill_mask)


# -----------------------------------------------------------------------------
# The model card

def metrics_text(record, keys):
    """'loss 7.7625, mlm loss 7.0666, mlm acc 9.5%' for the keys the record has."""
    name = lambda k: k.removeprefix("val_").replace("_", " ")
    text = lambda k, v: f"{name(k)} {v:.1%}" if k.endswith("_acc") else f"{name(k)} {v:.4f}"
    return ", ".join(text(k, record[k]) for k in keys if record.get(k) is not None)


def pretraining_rows(ckpt, records):
    """The model card's lines on a train.py run: its data, objective, length and last evaluation."""
    cfg, step = ckpt.get("config") or {}, ckpt.get("step", 0)
    data = cfg.get("data_dir", "?")
    try:
        with open(os.path.join(data, "meta.json")) as f:
            meta = json.load(f)
        source = meta["source"].get("dataset") or meta["source"].get("files") or meta["source"].get("jsonl")
        source = " ".join(source) if isinstance(source, list) else source
        data += f" ({meta['train_tokens']:,} training tokens, from {source})"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the data folder is on the machine that trained
    records = [r for r in records if r["step"] <= step]  # up to the checkpoint, not a later run's steps
    evals = [r for r in records if "val_loss" in r]
    tokens = next((r["tokens"] for r in reversed(records) if "tokens" in r), None)  # older logs lack it
    if tokens is None and "tokens_per_step" in cfg:
        tokens = step * cfg["tokens_per_step"]
    masking = f"masked LM (mask_prob {cfg.get('mask_prob', '?')})"
    objective = (f"{masking} + next sentence prediction" if cfg.get("nsp", True)
                 else f"{masking} only, on text packed across documents; the NSP head is untrained")
    rows = [("trained with", "nanoBERT train.py: " + objective), ("data", data),
            ("training", f"{step:,} steps" + (f", {tokens:,} tokens" if tokens is not None else "")
             + (f", sequences of {cfg['block_size']}" if "block_size" in cfg else ""))]
    if evals:
        keys = ("val_loss", "val_mlm_loss", "val_mlm_acc", "val_nsp_loss", "val_nsp_acc")
        rows.append((f"validation at step {evals[-1]['step']:,}", metrics_text(evals[-1], keys)))
    if "best_val_loss" in ckpt:
        rows.append(("best validation loss", f"{ckpt['best_val_loss']:.4f}"))
    return rows


def finetuning_rows(ckpt, records):
    """The model card's lines on a finetune.py run: its task, labels, length and the kept epoch's scores."""
    cfg, labels = ckpt.get("config") or {}, ckpt["labels"]
    data = ", ".join(f"{k} {cfg[k]}" for k in ("train_file", "val_file") if cfg.get(k)) or "its dataset"
    classes = f"{len(labels)} classes, {', '.join(map(str, labels))}" if labels else "regression, one number"
    epochs, steps = max((r.get("epoch", 0) for r in records), default=0), max((r["step"] for r in records), default=0)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in (ckpt.get("val_metrics") or {}).items())
    return [("trained with", f"nanoBERT finetune.py, from {ckpt.get('init_from', '?')}"),
            ("task", f"{ckpt.get('task', '?')} ({data}): {classes}"),
            ("training", f"{epochs} epochs, {steps:,} steps; kept: epoch {ckpt.get('epoch', '?')}, step "
                         f"{ckpt.get('step', 0):,}"),
            (f"validation ({ckpt.get('metric', '?')} picks the epoch)", scores)]


def model_card(ckpt, model, tok, records, name):
    """README.md: what the model is, what it was trained on, for how long, how well it did, how to use it."""
    c, pretraining = model.config, ckpt["kind"] == "pretraining"
    vocab = {"gpt2": "GPT-2 BPE (tiktoken's gpt2) + [CLS] [SEP] [MASK] [PAD]",
             "wordpiece": "WordPiece, the vocab.txt of the HuggingFace BERT it started from",
             "tokenizer.json": "byte-level BPE, its tokenizer.json" if tok.byte_level else "its tokenizer.json"}[tok.name]
    vocab += f", {tok.n_ids:,} ids" + (f"; ids {tok.n_ids:,} and up are unused padding rows" if c.vocab_size > tok.n_ids else "")
    rows = [("model", f"BERT, {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, feed-forward {c.ffn}, "
                      f"{c.max_positions} positions; {model.num_params() / 1e6:.2f}M parameters"),
            ("vocabulary", f"{vocab}; {c.vocab_size} embedding rows")]
    rows += pretraining_rows(ckpt, records) if pretraining else finetuning_rows(ckpt, records)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    if pretraining:
        use = (f'fill = pipeline("fill-mask", model="{name}")\n'
               'fill("the [MASK] sat on the mat.")' + ("  # a [MASK] is one token, with the space before it"
                                                       if tok.name != "wordpiece" else ""))
    else:
        use = (f'classify = pipeline("text-classification", model="{name}", truncation=True)\n'
               'classify("a text")  # or {"text": "first", "text_pair": "second"}'
               + ("; the score is the number itself" if not ckpt["labels"] else "")
               + f"\n# truncation=True cuts a text to the model's {c.max_positions} positions, the longer text of a pair "
               "first, as finetune.py does; without it a longer text stops the pipeline with an error")
    return (f"---\nlibrary_name: transformers\npipeline_tag: {'fill-mask' if pretraining else 'text-classification'}\n"
            f"tags: [bert, nanobert]\n---\n\n# {name}\n\n"
            f"A BERT {'pretrained' if pretraining else 'fine-tuned'} with nanoBERT; export.py wrote this folder from "
            f"its ckpt.pt.\n\n| | |\n|---|---|\n{table}\n\n"
            f"## Use\n\n```python\nfrom transformers import pipeline\n{use}\n```\n").encode()


def to_json(obj):
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


# -----------------------------------------------------------------------------

def main(argv=None):
    cfg, _ = read_settings(globals(), argv)
    path = runtime.checkpoint_path(cfg.init_from)
    run_dir = os.path.dirname(path) or "."
    out_dir = cfg.out_dir or os.path.relpath(os.path.abspath(run_dir) + "-hf")
    require(check_settings(cfg, out_dir, run_dir))
    ckpt = runtime.load_checkpoint(path)
    require(check_checkpoint(ckpt, path, run_dir), what=f"checkpoint {path}")
    model = runtime.model_from_checkpoint(ckpt, path)

    # everything is built before anything is written
    c = model.config
    tok = tokenization.for_checkpoint(ckpt, run_dir)
    files = tokenizer_files(tok, c.max_positions, ckpt["kind"] == "pretraining")
    files["README.md"] = model_card(ckpt, model, tok, runtime.read_log(os.path.join(run_dir, "log.jsonl")),
                                    os.path.basename(os.path.normpath(out_dir)))
    files["config.json"] = to_json(hf_config(ckpt, c, tok.pad))
    weights = safetensors_writer(to_hf_state_dict(model.state_dict()))

    os.makedirs(out_dir, exist_ok=True)
    # an earlier export goes first, config.json before the rest: a folder without config.json is not a
    # model yet, and no stale file of another tokenizer (a tokenizer.json beside a vocab.txt) stays behind
    for f in ("config.json",) + FILES:
        if os.path.isfile(os.path.join(out_dir, f)):
            os.remove(os.path.join(out_dir, f))
    runtime.write_atomic(os.path.join(out_dir, "model.safetensors"), weights)
    for f in FILES:  # config.json last: a folder that has it holds a complete export
        if f in files:
            runtime.write_bytes(os.path.join(out_dir, f), files[f])
    kind = "BertForPreTraining" if ckpt["kind"] == "pretraining" else "BertForSequenceClassification"
    print(f"wrote {out_dir}: {kind} ({c.n_layer} layers x {c.n_embd}, {model.num_params() / 1e6:.2f}M parameters) "
          f"from {path} at step {ckpt.get('step', 0):,}; {ckpt.get('tokenizer', 'gpt2')} tokenizer; model card "
          "README.md")
    use = 'pipeline("fill-mask", model="{}")' if ckpt["kind"] == "pretraining" else \
        'pipeline("text-classification", model="{}", truncation=True)  # truncation: texts longer than the model'
    print("use it: from transformers import pipeline; " + use.format(out_dir))


if __name__ == "__main__":
    runtime.run(main)

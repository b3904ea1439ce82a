"""
Turn a text corpus into the token files that train.py reads.

    python prepare.py                                      # roneneldan/TinyStories -> data/tinystories
    python prepare.py --dataset wikitext --config wikitext-103-raw-v1
    python prepare.py --files "corpus/*.txt"               # a document = a blank-line separated paragraph
    python prepare.py --files "books/**/*.txt" --doc_per_file   # a document = a whole file
    python prepare.py --jsonl "dump/*.jsonl" --text_column content
    python prepare.py --files "de/*.txt" --vocab_size=16384          # a vocabulary trained on this corpus
    python prepare.py --files "med/*.txt" --tokenizer=bert-folder     # a BERT's own WordPiece vocabulary

Every source goes through HuggingFace `datasets`, is tokenised in parallel processes and streamed to
disk in bounded memory. The vocabulary is GPT-2's BPE (tiktoken) unless --vocab_size trains a
byte-level BPE on the training documents, or --tokenizer names one (a tokenizer.json made here, or a
HuggingFace BERT folder, whose weights train.py --init_from=<folder> then trains further on this corpus).
The output folder holds:

    train.bin, val.bin            uint16 token stream: doc0 EOT doc1 EOT ... docN EOT
    train_docs.npy, val_docs.npy  int64 offsets, n_docs + 1 of them: document i is the tokens
                                  [offs[i], offs[i+1] - 1), its EOT sits at offs[i+1] - 1
    tokenizer.json                the vocabulary, unless it is GPT-2's
    meta.json                     tokenizer, special ids, counts and source; written last, so a
                                  folder without it holds an interrupted run

EOT is the vocabulary's document separator: <|endoftext|>, or [SEP] in a BERT's WordPiece.

A run that stops early (bad input, a full disk, Ctrl-C) says why in one line and leaves the folder
as it was.

Documents are stripped of surrounding whitespace and empty ones skipped. Validation documents come
from the dataset's own validation split, or else every 1/val_fraction-th document is held out.
"""
import argparse
import codecs
import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time

import numpy as np

import tokenizer as tokenization

DEFAULT_DATASET = "roneneldan/TinyStories"  # what config/bert_tiny.py trains on (data/tinystories)
SPLITS = ("train", "val")
OUTPUTS = [f"{s}{ext}" for s in SPLITS for ext in (".bin", "_docs.npy")] + ["tokenizer.json", "meta.json"]
CTRL_C_GRACE_S = 10  # after a Ctrl-C, the seconds datasets' pools get to wind down before they are killed


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", help=f"HuggingFace dataset name or local dataset folder (default {DEFAULT_DATASET})")
    src.add_argument("--files", nargs="+", metavar="GLOB",
                     help="plain text files; a document is a paragraph (text between blank lines)")
    src.add_argument("--jsonl", nargs="+", metavar="GLOB", help="JSON lines files, one document per line")
    p.add_argument("--config", help="dataset config name, e.g. wikitext-103-raw-v1")
    p.add_argument("--split", default="train", help="split to train on")
    p.add_argument("--val_split", default="validation",
                   help="the dataset's validation split; if it has none (or this is ''), hold out --val_fraction")
    p.add_argument("--val_fraction", type=float, default=0.01,
                   help="fraction of documents held out for validation when there is no validation split")
    p.add_argument("--text_column", default="text", help="column (JSON field) that holds the text")
    p.add_argument("--doc_per_file", action="store_true", help="with --files: each file is one document")
    p.add_argument("--out_dir", help="output folder (default data/<dataset name, lowercased>, and -8k for --vocab_size=8192)")
    p.add_argument("--overwrite", action="store_true", help="replace bins already in --out_dir")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab_size", type=int, default=0,
                       help=f"train a byte-level BPE of this many ids ({tokenization.MIN_VOCAB:,} to "
                            f"{tokenization.MAX_VOCAB:,}, e.g. 8192 or 32768) on the training documents; "
                            "default: GPT-2's")
    vocab.add_argument("--tokenizer", metavar="PATH",
                       help="tokenise with this vocabulary: a tokenizer.json (another data folder's), or a "
                            "HuggingFace BERT folder (vocab.txt or tokenizer.json) to continue its pretraining")
    p.add_argument("--num_proc", type=int, default=len(os.sched_getaffinity(0)), help="tokenizer processes")
    p.add_argument("--cache_dir", help="where datasets keeps its Arrow copy of the corpus (default: its own cache)")
    args = p.parse_args(argv)
    if args.doc_per_file and not args.files:
        p.error("--doc_per_file goes with --files")
    if args.dataset and os.path.isfile(args.dataset):
        p.error(f"--dataset takes a dataset name or folder, and {args.dataset} is a file: pass it with --files "
                "(plain text) or --jsonl (JSON lines)")
    if not 0 <= args.val_fraction < 1:
        p.error("--val_fraction must be in [0, 1)")
    if args.num_proc < 1:
        p.error("--num_proc must be at least 1")
    if args.tokenizer == "":
        p.error("--tokenizer is empty: give a tokenizer.json or a HuggingFace BERT folder, or leave it out for GPT-2's")
    if args.vocab_size and not tokenization.MIN_VOCAB <= args.vocab_size <= tokenization.MAX_VOCAB:
        p.error(f"--vocab_size must be in [{tokenization.MIN_VOCAB:,}, {tokenization.MAX_VOCAB:,}] (the bins hold "
                f"uint16 ids), got {args.vocab_size:,}")
    if not (args.files or args.jsonl or args.dataset):
        args.dataset = DEFAULT_DATASET
    if args.out_dir is None:
        size = args.vocab_size and (f"{args.vocab_size // 1024}k" if args.vocab_size % 1024 == 0 else str(args.vocab_size))
        args.out_dir = os.path.join("data", default_name(args) + (f"-{size}" if size else ""))
    return args


def default_name(args):
    if args.dataset:
        return os.path.basename(os.path.normpath(args.dataset)).lower()
    # the last folder before the first wildcard: "corpus/**/*.txt" -> corpus, "a/b.txt" -> b
    parts = os.path.normpath(os.path.abspath((args.files or args.jsonl)[0])).split(os.sep)
    n = next((i for i, part in enumerate(parts) if glob.has_magic(part)), None)
    name = parts[n - 1] if n else os.path.splitext(parts[-1])[0]
    return name.lower() or "corpus"


def resolve_files(patterns):
    """Sorted file list for the globs, so the output does not depend on directory order."""
    files = []
    for pattern in patterns:
        matches = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
        if not matches and os.path.isdir(pattern):
            raise SystemExit(f"{pattern!r} is a folder: name its files, e.g. --files \"{os.path.join(pattern, '*.txt')}\" "
                             f"(or \"{os.path.join(pattern, '**', '*.txt')}\" for its subfolders too)")
        if not matches:
            raise SystemExit(f"no files match {pattern!r}: check the path (quote globs so the shell leaves them alone)")
        files += matches
    return sorted(set(files))


def check_text(path, n=1 << 16):
    """Refuse a file that is not text before datasets reads it: a NUL byte near the start means a binary or
    compressed file, or UTF-16. (datasets would unpack a .gz itself, but the byte counts here would be wrong.)"""
    try:
        with open(path, "rb") as f:
            head = f.read(n)
    except OSError as e:
        raise SystemExit(f"cannot read {path}: {e.strerror}")
    if b"\0" in head:
        raise SystemExit(f"{path} is not UTF-8 text (it holds NUL bytes): a binary or compressed file, or UTF-16 "
                         "text. Unpack or convert it (iconv -f UTF-16 -t UTF-8), or leave it out")


def first_bad_json_line(files):
    """'<file> line <n> is not ...' for the first line of the JSON lines files that is not a JSON object, or None."""
    for path in files:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.strip())
                except ValueError as e:
                    return f"{path} line {n} is not JSON ({e})"
                if not isinstance(row, dict):
                    return f"{path} line {n} is not a JSON object: {line.strip()[:50]}"
    return None


def hub_unreachable(timeout=5):
    """Why the HuggingFace hub cannot be reached, or None. One request with a short timeout, because offline
    huggingface_hub retries each request for ~25 s before it says so. An HTTP or TLS error means it answered."""
    import ssl
    import urllib.error
    import urllib.request

    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")  # huggingface_hub's setting for a mirror
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except OSError as e:  # URLError wraps the reason: no DNS, connection refused, timed out
        reason = getattr(e, "reason", e)
        return None if isinstance(reason, ssl.SSLError) else f"{url}: {reason}"
    return None


_bad_bytes = [0]


def _count_and_replace(err):
    _bad_bytes[0] += err.end - err.start
    return "\ufffd", err.end


codecs.register_error("prepare_count", _count_and_replace)


def count_undecodable(path, chunk_size=1 << 24):
    """Bytes of a file that are not UTF-8; datasets replaces them with U+FFFD, this counts them."""
    _bad_bytes[0] = 0
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="prepare_count")
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            decoder.decode(chunk)
    decoder.decode(b"", final=True)
    return _bad_bytes[0]


def load_corpus(args):
    """-> (DatasetDict, description of the source for meta.json, number of undecodable bytes)"""
    import datasets  # after argparse, so --help stays quick

    what = args.dataset or " ".join(args.files or args.jsonl)
    if args.dataset:
        path, kwargs = args.dataset, dict(name=args.config)
        source = dict(dataset=args.dataset, config=args.config, text_column=args.text_column)
        files = []
    else:
        files = resolve_files(args.files or args.jsonl)
        for f in files:
            check_text(f)
        # utf-8-sig drops a byte order mark; undecodable bytes become U+FFFD (counted below)
        # without empty files: datasets fails on a file with no rows when it converts files in parallel
        kwargs = dict(data_files=[f for f in files if os.path.getsize(f)], encoding="utf-8-sig",
                      encoding_errors="replace")
        if args.files:
            path = "text"
            kwargs["sample_by"] = "document" if args.doc_per_file else "paragraph"
            source = dict(files=args.files, document="file" if args.doc_per_file else "paragraph")
        else:
            path = "json"
            source = dict(jsonl=args.jsonl, text_column=args.text_column)
            # it logs a malformed line as an error, then raises it; the message below names the file and line
            logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
        source.update(n_files=len(files), bytes=sum(os.path.getsize(f) for f in files))
        if source["bytes"] == 0:
            raise SystemExit(f"empty corpus: {what} matches only empty files")
    hint = ""
    if args.dataset and not os.path.exists(args.dataset) and args.dataset.count("/") <= 1:  # a name on the hub
        local = "local files with --files or --jsonl (or --dataset with a folder)"
        if datasets.config.HF_HUB_OFFLINE:
            hint = f"; offline mode is on (HF_HUB_OFFLINE), so only datasets' cache was searched: use {local}"
        elif why := hub_unreachable():
            # offline mode, as HF_HUB_OFFLINE=1 would set it (both are read at each call): datasets' cache, or
            # a message at once, rather than after huggingface_hub's retries
            import huggingface_hub.constants
            datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
            hint = f"; the hub is unreachable ({why}), so only datasets' cache was searched. Offline? Use {local}"
        else:
            hint = "; check the name, --config and your connection to huggingface.co (or use --files/--jsonl)"
    try:
        # Arrow conversion: a file per process
        num_proc = min(args.num_proc, len(kwargs["data_files"])) if files else args.num_proc
        # local files are read where they are: no "Downloading data" bars for them
        quiet = None if args.dataset else datasets.DownloadConfig(disable_tqdm=True)
        dd = datasets.load_dataset(path, **kwargs, cache_dir=args.cache_dir, num_proc=num_proc, download_config=quiet)
    except Exception as e:  # offline, unknown name or config, malformed JSON: say which, then stop
        if interrupted(e):
            raise KeyboardInterrupt from None
        # datasets wraps the error that says what is wrong; a worker's traceback as text is not it
        while e.__cause__ is not None and type(e.__cause__).__name__ != "RemoteTraceback":
            e = e.__cause__
        if args.jsonl and (bad_line := first_bad_json_line(files)):
            raise SystemExit(f"could not load {what}: {bad_line}")
        if isinstance(e, ValueError) and "corresponds to no data" in str(e):  # no row in any file
            raise SystemExit(f"empty corpus: {what} holds no document")
        why = f"{type(e).__name__}: {e}"
        if type(e.__cause__).__name__ == "RemoteTraceback":  # from a worker: the last line of its first traceback
            why = re.split(r"\n\n(?:The above|During handling)", str(e.__cause__))[0].strip().splitlines()[-1]
        if "[Errno 28]" in why:
            hint = ": free some space, or choose another --cache_dir for datasets' copy of the corpus"
        raise SystemExit(f"could not load {what}: {why}{hint}")
    bad = {f: n for f in files if (n := count_undecodable(f))}
    if bad:
        print(f"warning: replaced {sum(bad.values())} undecodable bytes with U+FFFD in {len(bad)} file(s), "
              f"e.g. {next(iter(bad))}")
    return dd, source, sum(bad.values())


def held_out(indices, fraction):
    """Every 1/fraction-th document goes to validation: deterministic, spread evenly over the corpus,
    whole documents only. floor(n * fraction) of the first n documents are held out."""
    i = np.asarray(indices, dtype=np.float64)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def select_splits(dd, args):
    """-> [(Dataset, fraction of its documents that go to val.bin)]"""
    if args.split not in dd:
        raise SystemExit(f"no split {args.split!r}; the dataset has {sorted(dd)}: pass --split")
    own_val = bool(args.val_split) and args.val_split in dd
    parts = [(dd[args.split], 0.0), (dd[args.val_split], 1.0)] if own_val else [(dd[args.split], args.val_fraction)]
    for ds, _ in parts:
        if args.text_column not in ds.column_names:
            raise SystemExit(f"no column {args.text_column!r}; the dataset has {ds.column_names}: pass --text_column")
        dtype = getattr(ds.features[args.text_column], "dtype", None)
        if dtype not in ("string", "large_string"):
            raise SystemExit(f"column {args.text_column!r} holds {ds.features[args.text_column]}, not text: "
                             f"pass --text_column (columns: {ds.column_names})")
    if not own_val:
        print(f"no {args.val_split!r} split: holding out {args.val_fraction:.2%} of the documents for validation")
    return parts


_tokenizers = {}  # per process: a worker builds the tokenizer once, from the text of its vocabulary


def worker_tokenizer(vocabulary):
    """vocabulary: 'gpt2', or the text of a tokenizer.json."""
    if vocabulary not in _tokenizers:
        _tokenizers[vocabulary] = tokenization.GPT2Tokenizer() if vocabulary == "gpt2" else \
            tokenization.JSONTokenizer(vocabulary, "the vocabulary")
    return _tokenizers[vocabulary]


def training_texts(parts, text_column, batch_size=1000):
    """The training documents, in batches, for training a vocabulary: never the held-out ones."""
    for ds, fraction in parts:
        if fraction == 1.0:
            continue
        for start in range(0, len(ds), batch_size):
            texts = ds[start:start + batch_size][text_column]
            held = held_out(range(start, start + len(texts)), fraction)
            yield [t.strip() for t, h in zip(texts, held) if t and t.strip() and not h]


def get_vocabulary(args, parts):
    """GPT-2's, the one --tokenizer names, or one trained on the training documents (--vocab_size)."""
    if args.tokenizer:
        tok = tokenization.from_path(args.tokenizer)
        if tok.n_ids > tokenization.MAX_VOCAB:
            raise SystemExit(f"--tokenizer {args.tokenizer} has {tok.n_ids:,} ids, more than the {tokenization.MAX_VOCAB:,} "
                             "that uint16 bins can hold")
        return tok
    if args.vocab_size:
        n = sum(len(ds) for ds, fraction in parts if fraction < 1)
        print(f"training a {args.vocab_size:,}-id byte-level BPE on the training documents")
        return tokenization.train_bpe(training_texts(parts, args.text_column), args.vocab_size, n)
    return tokenization.GPT2Tokenizer()


def tokenize_batch(batch, indices, text_column, val_fraction, vocabulary):
    """datasets.map function: a pyarrow batch of documents -> one row per non-empty document, holding
    its tokens followed by EOT, and whether it goes to validation."""
    import pyarrow as pa

    tok = worker_tokenizer(vocabulary)
    docs, kept = [], []
    for i, text in zip(indices, batch.column(text_column).to_pylist()):
        text = text.strip() if text else ""
        if text:
            ids = tok.encode(text)  # "<|endoftext|>" or "[MASK]" in the text stays text
            ids.append(tok.eot)
            docs.append(np.array(ids, dtype=np.uint16))  # 2 bytes a token from here on, not a Python int's ~30
            kept.append(i)
    # one flat array plus offsets: converting a list of lists to Arrow directly costs a third of the time.
    # int64 offsets: a batch of whole books (--doc_per_file) can hold more than 2**31 tokens
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in docs], out=offsets[1:])
    flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint16)
    return pa.table({"ids": pa.LargeListArray.from_arrays(offsets, flat), "val": held_out(kept, val_fraction)})


def tokenize(parts, args, tok, cache_prefix):
    vocabulary = "gpt2" if tok.name == "gpt2" else tok.tok.to_str()
    tokenized = []
    for k, (ds, fraction) in enumerate(parts):
        tokenized.append(ds.with_format("arrow").map(
            tokenize_batch, batched=True, with_indices=True, remove_columns=ds.column_names,
            fn_kwargs=dict(text_column=args.text_column, val_fraction=fraction, vocabulary=vocabulary),
            num_proc=min(args.num_proc, len(ds)) if len(ds) > 1 else None,
            # a scratch file, deleted at the end, never a stale cache from another run
            cache_file_name=f"{cache_prefix}{k}.arrow", load_from_cache_file=False,
            desc=f"tokenizing {len(ds):,} rows"))
    return tokenized


def count_docs(tokenized, what):
    import pyarrow.compute as pc

    n_val = sum(pc.sum(t.data.column("val")).as_py() or 0 for t in tokenized)
    n_docs = {"train": sum(len(t) for t in tokenized) - n_val, "val": n_val}
    if n_docs["train"] + n_val == 0:
        raise SystemExit(f"empty corpus: {what} holds no document with any text")
    for s, hint in (("train", "lower"), ("val", "raise")):
        if n_docs[s] == 0:
            raise SystemExit(f"no {s} documents among the {n_docs['train'] + n_val} documents of {what}: "
                             f"{hint} --val_fraction")
    return n_docs


def write_bins(tokenized, n_docs, tmp, batch_size=10_000):
    """Stream the tokenised documents into the temporary train/val files, a batch at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tqdm.auto import tqdm  # a dependency of datasets

    n_tokens, row = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    with contextlib.ExitStack() as files, tqdm(total=sum(n_docs.values()), unit="docs", desc="writing") as bar:
        bins = {s: files.enter_context(open(tmp[f"{s}.bin"], "wb")) for s in SPLITS}
        offs = {s: files.enter_context(open(tmp[f"{s}_docs.npy"], "wb")) for s in SPLITS}
        for s in SPLITS:
            # the .npy header, then the offsets in order: plain writes, so that a full disk is an OSError
            # (in a memory-mapped file it is a SIGBUS that kills the process)
            header = dict(descr=np.lib.format.dtype_to_descr(np.dtype(np.int64)), fortran_order=False,
                          shape=(n_docs[s] + 1,))
            np.lib.format.write_array_header_1_0(offs[s], header)
            offs[s].write(np.zeros(1, dtype=np.int64))
        for t in tokenized:
            for batch in t.with_format("arrow").iter(batch_size=batch_size):
                ids, is_val = batch.column("ids").combine_chunks(), batch.column("val").to_numpy()
                for s, mask in (("train", ~is_val), ("val", is_val)):
                    part = ids.filter(pa.array(mask))
                    if len(part) == 0:
                        continue
                    flat = pc.list_flatten(part).to_numpy()
                    bins[s].write(flat)
                    offs[s].write(n_tokens[s] + np.cumsum(pc.list_value_length(part).to_numpy(), dtype=np.int64))
                    n_tokens[s] += len(flat)
                    row[s] += len(part)
                bar.update(len(batch))
        assert row == n_docs, "the .npy headers hold the number of documents"
        for f in (*bins.values(), *offs.values()):
            f.flush()
            os.fsync(f.fileno())
    return n_tokens


def handle_ctrl_c(end_now, grace):
    """Ctrl-C reaches every process in the terminal's group: this one and the workers of datasets' pools,
    which are forked from it and inherit this handler. A worker ignores it (its pool terminates it) rather
    than print a traceback of its own; this process raises KeyboardInterrupt, and the pools wind down.
    They do in a second or two, but not always. terminate() kills the pool's workers, and one killed while
    it writes its result holds the lock of the pool's result queue for good: the pool's task thread then
    waits for that lock forever, and terminate() for the thread (4 of 310 Ctrl-Cs on a loaded machine).
    So the first Ctrl-C also starts a timer, and if this process is still winding down grace seconds
    later, end_now() ends it. Returns the handler this one replaces, and a function that stops the timer."""
    main_pid, timer = os.getpid(), []

    def handle(signum, frame):
        if os.getpid() != main_pid:
            return
        if not timer:
            timer.append(threading.Timer(grace, end_now))
            timer[0].daemon = True
            timer[0].start()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, handle), lambda: timer and timer[0].cancel()


def clean_up(scratch, new_dirs):
    """Remove what an unfinished run wrote: its scratch folder, and the folders it created if they are empty."""
    shutil.rmtree(scratch, ignore_errors=True)
    for d in new_dirs:
        try:
            os.rmdir(d)
        except OSError:
            break


def interrupted(e):
    """Whether e is a Ctrl-C or came while handling one: datasets' pool turns it into a TimeoutError."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__context__
    return False


def prepare(args):
    t0 = time.time()
    if any(os.path.exists(os.path.join(args.out_dir, f)) for f in OUTPUTS) and not args.overwrite:
        raise SystemExit(f"{args.out_dir} already holds prepared data: pass --overwrite to replace it, "
                         "or choose another --out_dir")
    new_dirs, d = [], os.path.abspath(args.out_dir)  # the folders this run creates, removed again if it fails
    while not os.path.exists(d):
        new_dirs, d = new_dirs + [d], os.path.dirname(d)
    if not os.path.isdir(d):
        raise SystemExit(f"--out_dir {args.out_dir}: {d} is a file, not a folder")
    # everything unfinished lives in out_dir/.tmp (same file system, so os.replace is atomic)
    scratch = os.path.join(args.out_dir, ".tmp")
    tmp = {f: os.path.join(scratch, f) for f in OUTPUTS}
    stopped = f"interrupted; {args.out_dir} is left as it was"
    ending = threading.Lock()  # taken once: by the renames that end a run, or by end_now

    def end_now():
        """A Ctrl-C's wind-down is stuck in a pool of datasets': end the pool's processes and this one."""
        if not ending.acquire(blocking=False):
            return  # the renames have begun, and end soon
        import multiprocess  # datasets' pools are of multiprocess (multiprocessing with dill)
        for p in multiprocess.active_children():
            p.kill()
        clean_up(scratch, new_dirs)
        print(f"\n{stopped}", file=sys.stderr, flush=True)  # after the progress bar it cut short
        os._exit(1)

    previous_handler, stop_timer = handle_ctrl_c(end_now, CTRL_C_GRACE_S)
    try:
        if not (args.vocab_size or args.tokenizer):
            tokenization.GPT2Tokenizer()  # fails here, once, offline without its files
        elif args.tokenizer:
            tokenization.from_path(args.tokenizer)  # a bad path or a damaged file, before the corpus is read
        else:
            tokenization.require_tokenizers("training a vocabulary (--vocab_size)")
        os.makedirs(scratch, exist_ok=True)
        dd, source, bad_bytes = load_corpus(args)
        parts = select_splits(dd, args)
        source.update(split=args.split, val_split=args.val_split if len(parts) == 2 else None,
                      val_fraction=None if len(parts) == 2 else args.val_fraction)
        tok = get_vocabulary(args, parts)
        t1 = time.time()
        tokenized = tokenize(parts, args, tok, os.path.join(scratch, "tokens"))
        t2 = time.time()
        n_rows = sum(len(ds) for ds, _ in parts)
        n_docs = count_docs(tokenized, what=args.dataset or " ".join(args.files or args.jsonl))
        n_tokens = write_bins(tokenized, n_docs, tmp)
        if tok.name != "gpt2":
            with open(tmp["tokenizer.json"], "w", encoding="utf-8") as f:
                f.write(tok.tok.to_str())
        meta = dict(
            tokenizer=tok.name, vocabulary=tok.identity(), vocab_size=tok.rows, n_ids=tok.n_ids, dtype="uint16",
            special_ids=tok.specials(),
            train_tokens=n_tokens["train"], val_tokens=n_tokens["val"],  # EOTs included
            train_docs=n_docs["train"], val_docs=n_docs["val"],
            empty_docs_skipped=n_rows - n_docs["train"] - n_docs["val"],
            undecodable_bytes_replaced=bad_bytes,
            source=source,
            layout="<split>.bin: doc EOT doc EOT ...; <split>_docs.npy: int64 offsets, document i is "
                   "tokens [offs[i], offs[i+1]-1) and offs[i+1]-1 holds its EOT",
        )
        with open(tmp["meta.json"], "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        # meta.json goes first and comes back last: a folder with meta.json holds one complete run.
        # Ctrl-C is ignored from here on, so that these few renames never stop halfway
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ending.acquire()
        if os.path.exists(os.path.join(args.out_dir, "meta.json")):
            os.remove(os.path.join(args.out_dir, "meta.json"))
        for f in OUTPUTS:
            if os.path.exists(tmp[f]):
                os.replace(tmp[f], os.path.join(args.out_dir, f))
            elif os.path.exists(os.path.join(args.out_dir, f)):  # GPT-2 over a trained vocabulary's folder
                os.remove(os.path.join(args.out_dir, f))
    except BaseException as e:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if interrupted(e):
            raise SystemExit(stopped) from None
        if isinstance(e, OSError):  # no permission, a read-only file system, a full disk
            where = f" ({e.filename})" if e.filename else ""
            hint = ": free some space, or choose another --out_dir" if e.errno == errno.ENOSPC else ""
            raise SystemExit(f"could not write {args.out_dir}: {e.strerror or e}{where}; it is left as it was{hint}"
                             ) from None
        raise
    finally:
        stop_timer()  # the pools have wound down
        signal.signal(signal.SIGINT, previous_handler)
        clean_up(scratch, new_dirs)
    t3, total = time.time(), n_tokens["train"] + n_tokens["val"]
    print(f"wrote {args.out_dir}: train {n_docs['train']:,} docs {n_tokens['train']:,} tokens, "
          f"val {n_docs['val']:,} docs {n_tokens['val']:,} tokens")
    print(f"{t3 - t0:.1f}s: loading {t1 - t0:.1f}s, tokenizing {t2 - t1:.1f}s ({total / (t2 - t1):,.0f} tokens/s "
          f"with {args.num_proc} processes), writing {t3 - t2:.1f}s")
    return meta


def main(argv=None):
    return prepare(parse_args(argv))


if __name__ == "__main__":
    main()

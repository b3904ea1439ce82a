"""
The vocabulary contract, and the tokenizers that every script shares.

A tokenizer here is also the vocabulary object that train.py, prepare.py and the other scripts read:
the ids of the five specials (eot, cls, sep, mask, pad), n_ids (ids it knows), rows (the embedding
rows a new model gets: n_ids padded to a multiple of 64, for fast kernels), which ids are text, and
where words start. No module constant says what "our ids" are: the data folder and the checkpoint do.

- GPT-2 (the default): tiktoken's byte-pair encoding, ids 0..50255 text, then 50256 <|endoftext|>
  (separates documents in the corpus bins), 50257 [CLS], 50258 [SEP], 50259 [MASK], 50260 [PAD];
  50304 rows.
- A vocabulary trained on the corpus (prepare.py --vocab_size): byte-level BPE, so text in any script
  round-trips, with the same five specials after its text ids. It lives in a tokenizer.json beside
  the bins and inside every checkpoint trained on them.
- A HuggingFace BERT's WordPiece vocab.txt, or any tokenizer.json that has [CLS] [SEP] [MASK] [PAD]
  (export.py's folders among them). Their documents are separated by [SEP] in the bins.

Plain text never becomes a special token: a literal "[MASK]" or "<|endoftext|>" in a corpus is text.
Only encode_masked turns "[MASK]" into the mask, and a mask takes the one space before it.
"""
import functools
import hashlib
import json
import os
import re
import tempfile

import numpy as np

MASK_TOKEN = "[MASK]"
SPECIALS = ("<|endoftext|>", "[CLS]", "[SEP]", MASK_TOKEN, "[PAD]")  # a trained vocabulary's, after its text ids
MIN_VOCAB, MAX_VOCAB = 512, 65536  # the bins are uint16: ids up to 65535


def padded(n, multiple=64):
    return -(-n // multiple) * multiple


def bytes_to_unicode():
    """GPT-2's printable stand-in for every byte, in which byte-level BPE vocabularies are written."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


class Vocabulary:
    """What every tokenizer shares: specials, sizes, text ids, word starts, and how masks are encoded.
    Subclasses give encode(text), decode(ids), token_bytes(id) (None for a special) and is_word_start."""
    eot = cls = sep = mask = pad = n_ids = None

    @property
    def rows(self):
        return padded(self.n_ids)

    def specials(self):
        return {"eot": self.eot, "cls": self.cls, "sep": self.sep, "mask": self.mask, "pad": self.pad}

    @functools.cached_property
    def is_text(self):
        """(rows,) bool: which ids are text, the only ones masking may put in and fill-mask may put out."""
        m = np.zeros(self.rows, bool)
        m[self.text_ids()] = True
        return m

    def text_mask(self, n):
        """is_text for a model of n rows (a HuggingFace BERT's are not padded)."""
        return np.concatenate([self.is_text, np.zeros(max(n - self.rows, 0), bool)])[:n]

    def encode_masked(self, text):
        """Encode text in which "[MASK]" marks a token to predict. In pretraining a masked word carries its
        leading space (" cat" is one byte-level token), so a mask takes the space before it:
        "the [MASK] sat" -> "the", [MASK], " sat". (WordPiece drops spaces anyway.)"""
        pieces = text.split(MASK_TOKEN)
        ids = []
        for i, piece in enumerate(pieces):
            if i < len(pieces) - 1 and piece.endswith(" "):
                piece = piece[:-1]  # this space belongs to the masked token
            ids.extend(self.encode(piece))
            if i < len(pieces) - 1:
                ids.append(self.mask)
        return ids

    def word_boundaries(self):
        """Per id: does it start a word, and does it end a line (so the next token starts one). For whole-word
        masking. Byte-level BPE keeps a word's leading space (" cat" against "cat"); WordPiece marks the
        pieces that continue a word with ##."""
        starts, ends_line = np.zeros(self.rows, bool), np.zeros(self.rows, bool)
        for i in self.text_ids():
            b = self.token_bytes(int(i))
            starts[i] = self.is_word_start(int(i), b)
            ends_line[i] = b.endswith(b"\n")
        return starts, ends_line


# -----------------------------------------------------------------------------
# GPT-2, through tiktoken

GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"  # tiktoken_ext/openai_public.py


def gpt2_files_problem(e):
    """What to do when tiktoken.get_encoding("gpt2") raised e. tiktoken reads two files from its cache folder,
    named by the sha1 of their URL, and downloads them into it when they are missing."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache = os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        cache = os.environ.get("DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    names = {f: hashlib.sha1((GPT2_URL + f).encode()).hexdigest() for f in ("vocab.bpe", "encoder.json")}
    if all(os.path.isfile(os.path.join(cache, n)) for n in names.values()):
        return (f"tiktoken cannot load the GPT-2 encoding from its files in {cache} ({type(e).__name__}: {e}); "
                "they may be damaged: copy them again")
    return (f"tiktoken cannot load the GPT-2 encoding: its two files are not in {cache or '(no cache folder)'} and "
            f"downloading them failed ({type(e).__name__}). Offline? Copy {' and '.join(names)} from {GPT2_URL} to "
            f"a folder as {' and '.join(names.values())} (tiktoken's names for them) and set TIKTOKEN_CACHE_DIR "
            "to that folder")


class GPT2Tokenizer(Vocabulary):
    """tiktoken's GPT-2 encoding plus [CLS] [SEP] [MASK] [PAD]."""
    name = "gpt2"
    byte_level = True
    eot, cls, sep, mask, pad = 50256, 50257, 50258, 50259, 50260
    n_ids = 50261
    names = dict(zip((eot, cls, sep, mask, pad), SPECIALS))

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline, tiktoken cannot download its two GPT-2 files
            raise SystemExit(gpt2_files_problem(e)) from None
        assert self.enc.n_vocab == self.eot + 1 and self.enc.eot_token == self.eot
        self._text_ids = np.arange(self.eot)  # made once: masking draws from it every batch

    def identity(self):
        return self.name

    def encode(self, text):
        # encode_ordinary: a literal "<|endoftext|>" or "[MASK]" in a corpus is just text
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=1):
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def text_ids(self):
        return self._text_ids

    def token_bytes(self, i):
        return self.enc.decode_single_token_bytes(i) if i < self.eot else None

    def is_word_start(self, i, b):
        return b[:1].isspace()

    def decode(self, ids):
        # bytes first, then one utf-8 decode: a token that holds part of a character is fine
        out, buf = [], []
        for i in map(int, ids):
            if i >= self.eot:
                if buf:
                    out.append(self.enc.decode_bytes(buf).decode("utf-8", errors="replace"))
                    buf = []
                out.append(self.names.get(i, f"[unused{i}]"))
            else:
                buf.append(i)
        if buf:
            out.append(self.enc.decode_bytes(buf).decode("utf-8", errors="replace"))
        return "".join(out)


# -----------------------------------------------------------------------------
# tokenizer.json: a trained vocabulary, or a HuggingFace one

def require_tokenizers(why):
    try:
        import tokenizers  # optional: GPT-2-only users never need it
    except ImportError:
        raise SystemExit(f"{why} needs HuggingFace's tokenizers package: pip install tokenizers") from None
    return tokenizers


class JSONTokenizer(Vocabulary):
    """A tokenizer.json (its text, `source` names it in messages), read by HuggingFace's tokenizers. Its
    [CLS] [SEP] [MASK] [PAD] are looked up by name, the document separator is <|endoftext|> where it has
    one (a trained vocabulary) and [SEP] otherwise. name: 'tokenizer.json', or 'wordpiece' for a
    BERT's vocab.txt (export.py writes that back as a vocab.txt)."""

    def __init__(self, text, source="tokenizer.json", name="tokenizer.json"):
        Tokenizer = require_tokenizers(f"the tokenizer in {source}").Tokenizer
        try:
            self.tok = Tokenizer.from_str(text)
            spec = json.loads(text)
        except Exception as e:
            raise SystemExit(f"{source} is not a tokenizer that HuggingFace's tokenizers can read "
                             f"({type(e).__name__}: {str(e)[:120]}): restore it from where it came from") from None
        self.name, self.source, self.text = name, source, text
        self.tok.no_truncation()  # block_size cuts the rows here, the longer text first
        self.tok.no_padding()
        self.tok.encode_special_tokens = True  # a "[SEP]" written in the text is text
        self.n_ids = self.tok.get_vocab_size()
        ids = {t: self.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", MASK_TOKEN, "[PAD]")}
        if None in ids.values():
            missing = [t for t, i in ids.items() if i is None]
            raise SystemExit(f"{source} has no {', '.join(missing)}: a BERT tokenizer needs [CLS] [SEP] [MASK] [PAD]")
        self.cls, self.sep, self.mask, self.pad = ids.values()
        self.eot = self.tok.token_to_id(SPECIALS[0])
        self.eot = self.sep if self.eot is None else self.eot
        model, normalizer = spec.get("model") or {}, spec.get("normalizer") or {}
        self.byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
        self.prefix = model.get("continuing_subword_prefix") or ("##" if model.get("type") == "WordPiece" else None)
        self.lowercase = bool(normalizer.get("lowercase", False))
        special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        if not self.byte_level:  # BERT's [UNK] and [unused0] .. [unused993] are never words
            special |= {i for t, i in self.tok.get_vocab().items() if re.fullmatch(r"\[[A-Za-z0-9_]+\]", t)}
        self._text_ids = np.array(sorted(set(range(self.n_ids)) - special), dtype=np.int64)

    def identity(self):
        """Two vocabularies are the same when their canonical tokenizer.json is."""
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=1):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def text_ids(self):
        return self._text_ids

    def token_bytes(self, i):
        token = self.tok.id_to_token(i)
        if self.byte_level:
            return bytes(BYTE_OF[c] for c in token if c in BYTE_OF)
        return token.encode()

    def is_word_start(self, i, b):
        if self.byte_level:
            return b[:1].isspace()
        return not (self.prefix and self.tok.id_to_token(i).startswith(self.prefix))

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def vocab_txt(self):
        """A WordPiece vocabulary as BERT's vocab.txt: one token a line, in id order."""
        by_id = sorted(self.tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        assert [i for _, i in by_id] == list(range(len(by_id))), "a vocab.txt has no gaps"
        return "".join(t + "\n" for t, _ in by_id).encode()


def read_json_tokenizer(path, name="tokenizer.json"):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"cannot read {path} ({type(e).__name__}): restore it from where it came from") from None
    return JSONTokenizer(text, path, name)


def wordpiece(folder):
    """The WordPiece vocabulary of a HuggingFace BERT checkpoint folder (vocab.txt), as a tokenizer.json."""
    vocab_file = os.path.join(folder, "vocab.txt")
    if not os.path.isfile(vocab_file):
        raise SystemExit(f"no vocab.txt in {folder}: a BERT checkpoint folder needs its vocabulary")
    lowercase = True  # bert-*-uncased; cased checkpoints say so in tokenizer_config.json
    cfg_file = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            lowercase = json.load(f).get("do_lower_case", lowercase)
    elif "-cased" in os.path.basename(os.path.normpath(folder)):
        lowercase = False
    BertWordPieceTokenizer = require_tokenizers("a HuggingFace BERT checkpoint's vocab.txt").BertWordPieceTokenizer
    # BertWordPieceTokenizer is BERT's normalizer, pre-tokenizer and WordPiece model around one Tokenizer
    text = BertWordPieceTokenizer(vocab_file, lowercase=lowercase)._tokenizer.to_str()
    return JSONTokenizer(text, vocab_file, "wordpiece")


def train_bpe(batches, vocab_size, n_docs=None):
    """A byte-level BPE of vocab_size ids (the five specials last) trained on an iterator of lists of texts,
    streamed: the corpus is never in memory. GPT-2's pre-tokenizer, so words keep their leading space."""
    t = require_tokenizers("training a vocabulary (--vocab_size)")
    tok = t.Tokenizer(t.models.BPE(ignore_merges=True))  # a pre-token that is a whole entry is that entry
    tok.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = t.decoders.ByteLevel()
    trainer = t.trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIALS), min_frequency=2, show_progress=True,
                                    initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(batches, trainer, length=n_docs)
    tok.add_special_tokens(list(SPECIALS))  # their ids follow the text ids, as in GPT-2's layout
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # prepare.py's workers fork after training
    return JSONTokenizer(tok.to_str(), "the trained vocabulary")


def get_tokenizer(hf_folder=None):
    """GPT-2 + specials for our checkpoints; for a HuggingFace folder, its WordPiece vocab.txt, or else its
    tokenizer.json."""
    if hf_folder is None:
        return GPT2Tokenizer()
    if not os.path.isfile(os.path.join(hf_folder, "vocab.txt")) and os.path.isfile(os.path.join(hf_folder, "tokenizer.json")):
        return read_json_tokenizer(os.path.join(hf_folder, "tokenizer.json"))
    return wordpiece(hf_folder)


def from_path(path):
    """prepare.py --tokenizer: a tokenizer.json file, or a folder holding one or a BERT's vocab.txt."""
    if os.path.isfile(path):
        return read_json_tokenizer(path)
    if not os.path.isdir(path):
        raise SystemExit(f"--tokenizer {path}: no such file or folder; give a tokenizer.json (e.g. another prepared "
                         "data folder's) or a HuggingFace BERT folder with vocab.txt or tokenizer.json")
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("vocab.txt", "tokenizer.json")):
        raise SystemExit(f"--tokenizer {path}: the folder holds no tokenizer.json or vocab.txt")
    return get_tokenizer(path)


def from_data(data_dir, meta):
    """The vocabulary a prepared data folder was tokenised with: GPT-2, or the tokenizer.json beside its bins."""
    if meta.get("tokenizer", "gpt2") == "gpt2":
        return GPT2Tokenizer()
    return read_json_tokenizer(os.path.join(data_dir, "tokenizer.json"), meta["tokenizer"])


def for_checkpoint(ckpt, folder):
    """The vocabulary a checkpoint of ours was trained with: GPT-2, the tokenizer.json it carries, or (from
    finetune.py before checkpoints carried theirs) the vocabulary files beside it in folder."""
    if ckpt.get("tokenizer", "gpt2") == "gpt2":
        return GPT2Tokenizer()
    if "tokenizer_json" in ckpt:
        return JSONTokenizer(ckpt["tokenizer_json"], f"the tokenizer in {folder}", ckpt["tokenizer"])
    return get_tokenizer(folder)


def carried(tok):
    """What a checkpoint keeps of its vocabulary, so that it works on any machine from the file alone."""
    return {"tokenizer": tok.name, **({} if tok.name == "gpt2" else {"tokenizer_json": tok.tok.to_str()})}

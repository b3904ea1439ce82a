"""
The vocabulary contract, and the tokenizers that every script shares.

Our own models use tiktoken's GPT-2 byte-pair encoding plus four special tokens:

    ids 0..50255   text (GPT-2 BPE)
    50256          <|endoftext|>, separates documents in the corpus bins
    50257 [CLS]    50258 [SEP]    50259 [MASK]    50260 [PAD]

The model's embedding table is padded to 50304 rows (a multiple of 64, for fast kernels); ids above
50260 are never produced. HuggingFace BERT checkpoints bring their own vocabulary: a WordPiece vocab.txt,
which `WordPieceTokenizer` reads, or a tokenizer.json (export.py's folders among them), which
`JSONTokenizer` reads.
"""
import hashlib
import json
import os
import re
import tempfile

EOT, CLS, SEP, MASK, PAD = 50256, 50257, 50258, 50259, 50260
N_TEXT = EOT                # ids [0, N_TEXT) are text
VOCAB_SIZE = 50304          # the model's vocab_size for our checkpoints
MASK_TOKEN = "[MASK]"


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


class GPT2Tokenizer:
    """tiktoken's GPT-2 encoding plus [CLS] [SEP] [MASK] [PAD]."""
    name = "gpt2"
    eot, cls, sep, mask, pad = EOT, CLS, SEP, MASK, PAD
    vocab_size = VOCAB_SIZE
    specials = {EOT: "<|endoftext|>", CLS: "[CLS]", SEP: "[SEP]", MASK: "[MASK]", PAD: "[PAD]"}

    def __init__(self):
        import tiktoken
        try:
            self.enc = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline, tiktoken cannot download its two GPT-2 files
            raise SystemExit(gpt2_files_problem(e)) from None
        assert self.enc.n_vocab == EOT + 1 and self.enc.eot_token == EOT

    def encode(self, text):
        # encode_ordinary: a literal "<|endoftext|>" or "[MASK]" in a corpus is just text
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=1):
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def encode_masked(self, text):
        """Encode text in which "[MASK]" marks a token to predict.
        In pretraining a masked word carries its leading space (" cat" is one GPT-2 token), so a
        mask takes the space before it: "the [MASK] sat" -> "the", [MASK], " sat"."""
        pieces = text.split(MASK_TOKEN)
        ids = []
        for i, piece in enumerate(pieces):
            if i < len(pieces) - 1 and piece.endswith(" "):
                piece = piece[:-1]  # this space belongs to the masked token
            ids.extend(self.encode(piece))
            if i < len(pieces) - 1:
                ids.append(MASK)
        return ids

    def is_text(self, i):
        return 0 <= i < N_TEXT

    def decode(self, ids):
        # bytes first, then one utf-8 decode: a token that holds part of a character is fine
        out, buf = [], []
        for i in ids:
            i = int(i)
            if i in self.specials or i > EOT:
                if buf:
                    out.append(self.enc.decode_bytes(buf).decode("utf-8", errors="replace"))
                    buf = []
                out.append(self.specials.get(i, f"[unused{i}]"))
            else:
                buf.append(i)
        if buf:
            out.append(self.enc.decode_bytes(buf).decode("utf-8", errors="replace"))
        return "".join(out)


class WordPieceTokenizer:
    """The WordPiece vocabulary of a HuggingFace BERT checkpoint folder (vocab.txt).
    Uses the optional `tokenizers` library, imported here so that GPT-2-only users never need it."""
    name = "wordpiece"

    def __init__(self, folder):
        try:
            from tokenizers import BertWordPieceTokenizer  # optional: only for HuggingFace checkpoints
        except ImportError:
            raise SystemExit("HuggingFace BERT checkpoints need their WordPiece tokenizer: "
                             "pip install tokenizers")
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
        self.lowercase = lowercase
        self.tok = BertWordPieceTokenizer(vocab_file, lowercase=lowercase)
        vocab = self.tok.get_vocab()
        self.vocab_size = len(vocab)
        self.cls, self.sep, self.mask, self.pad = (vocab[t] for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]"))
        # ids that are never a word: [PAD] [UNK] [CLS] [SEP] [MASK] and the [unusedN] slots
        self.special_ids = {i for t, i in vocab.items() if re.fullmatch(r"\[[A-Za-z0-9_]+\]", t)}

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=1):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_masked(self, text):
        return self.encode(text)  # WordPiece knows [MASK] as a special token already

    def is_text(self, i):
        return 0 <= i < self.vocab_size and i not in self.special_ids

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


class JSONTokenizer:
    """The tokenizer.json of a HuggingFace folder that has no vocab.txt: what export.py writes, and what
    many newer BERT checkpoints carry. Its [CLS] [SEP] [MASK] [PAD] are looked up by name."""
    name = "tokenizer.json"

    def __init__(self, folder):
        try:
            from tokenizers import Tokenizer  # optional: only for HuggingFace folders
        except ImportError:
            raise SystemExit("this checkpoint's tokenizer.json needs the tokenizers package: pip install tokenizers")
        path = os.path.join(folder, "tokenizer.json")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:
            raise SystemExit(f"{path} is not a tokenizer the tokenizers package can read ({type(e).__name__}): "
                             "restore it from the folder it came from")
        self.tok.no_truncation()  # block_size cuts the rows here, the longer text first
        self.tok.no_padding()
        self.vocab_size = self.tok.get_vocab_size()
        ids = {t: self.tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]")}
        if None in ids.values():
            missing = [t for t, i in ids.items() if i is None]
            raise SystemExit(f"{path} has no {', '.join(missing)}: a BERT tokenizer needs [CLS] [SEP] [MASK] [PAD]")
        self.cls, self.sep, self.mask, self.pad = ids.values()
        self.special_ids = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=1):
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_masked(self, text):
        return self.encode(text)  # [MASK] is an added token: the tokenizer finds it in the text

    def is_text(self, i):
        return 0 <= i < self.vocab_size and i not in self.special_ids

    def decode(self, ids):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def get_tokenizer(hf_folder=None):
    """GPT-2 + specials for our checkpoints; for a HuggingFace folder, its WordPiece vocab.txt, or else its
    tokenizer.json."""
    if hf_folder is None:
        return GPT2Tokenizer()
    if not os.path.isfile(os.path.join(hf_folder, "vocab.txt")) and os.path.isfile(os.path.join(hf_folder, "tokenizer.json")):
        return JSONTokenizer(hf_folder)
    return WordPieceTokenizer(hf_folder)

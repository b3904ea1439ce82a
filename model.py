"""
All of BERT in one file: embeddings, encoder, pooler, the pretraining heads (masked language model,
next sentence prediction), a classification/regression head for fine-tuning, loading HuggingFace
BERT checkpoints, optimizer set-up and an MFU estimate.

References:
1) BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding, Devlin et al. 2018
   https://arxiv.org/abs/1810.04805
2) google-research/bert, the original TensorFlow implementation
3) huggingface/transformers modeling_bert.py, the reference this file is tested against (1e-5, fp32)

Only torch and the standard library are imported here; the hub download is imported where used.
Bad arguments and unusable checkpoint folders raise ValueError, with a message that says what to do.
"""
import inspect
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BertConfig:
    max_positions: int = 512    # the longest sequence: rows of the position embedding
    vocab_size: int = 50304     # GPT-2's 50257 + [CLS] [SEP] [MASK] [PAD], padded to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    ffn: int = 0                # width of the feed-forward layer; 0 means 4 * n_embd
    type_vocab_size: int = 2    # segment A / segment B
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    bias: bool = True           # biases in Linear and LayerNorm (BERT has them)
    init_std: float = 0.02      # std of the initial weights; BERT-base's 0.02 keeps a narrow model on the
                                # unigram plateau for thousands of steps

    def __post_init__(self):
        self.ffn = self.ffn or 4 * self.n_embd
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")


# -----------------------------------------------------------------------------
# The encoder

class SelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # query, key, value in one matmul
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x, mask):
        B, T, C = x.size()
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # bidirectional: every token sees every real token. mask is None when nothing is padded, so
        # the fastest (flash) kernel stays eligible; otherwise (B, 1, 1, T), True = attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.ffn, bias=config.bias)
        self.proj = nn.Linear(config.ffn, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # exact erf GELU, as BERT


class Block(nn.Module):
    """Post-LN, as in BERT: LayerNorm(x + Dropout(sublayer(x)))."""

    def __init__(self, config):
        super().__init__()
        self.attn = SelfAttention(config)
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, mask):
        x = self.ln_1(x + self.drop(self.attn(x, mask)))
        x = self.ln_2(x + self.drop(self.mlp(x)))
        return x


class _Base(nn.Module):
    """What every model here shares: BERT init, parameter count, optimizer, MFU, checkpoint loading."""

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            torch.nn.init.ones_(module.weight)

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            bert = self if isinstance(self, BertModel) else self.bert
            n -= bert.wte.weight.numel() + bert.wpe.weight.numel() + bert.wtt.weight.numel()
        return n

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay matrices and embeddings; never biases or LayerNorm gains
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # the fused kernel is one pass over all parameters: on a CPU it makes the step ~5x faster
        fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if fused else {}))

    def flops_per_token(self, seq_len, mlm_fraction=1.0):
        """Training FLOPs (forward + backward = 3x forward) per token. mlm_fraction is the share of
        positions the MLM head runs on (1.0 dense, ~0.15 sparse, 0.0 for no MLM head)."""
        c = self.config
        matmul = c.n_layer * (4 * c.n_embd ** 2 + 2 * c.n_embd * c.ffn) + mlm_fraction * (c.n_embd ** 2 + c.n_embd * c.vocab_size)
        attention = c.n_layer * 2 * 2 * seq_len * c.n_embd  # q @ k^T and att @ v, 2 FLOPs per multiply-add
        return 3 * (2 * matmul + attention)

    def estimate_mfu(self, tokens_per_sec, seq_len, device_type, mlm_fraction=1.0):
        """Model FLOPs utilisation as a fraction of the device's bf16 peak; None where the peak is unknown."""
        peak = peak_flops(device_type)
        return None if peak is None else self.flops_per_token(seq_len, mlm_fraction) * tokens_per_sec / peak

    @classmethod
    def from_pretrained(cls, name_or_path, verbose=True, **kwargs):
        """A HuggingFace BERT checkpoint: a hub name (bert-base-uncased) or a local folder with
        config.json and model.safetensors or pytorch_model.bin. Heads the checkpoint lacks are
        initialised fresh, and we say which."""
        folder = resolve_checkpoint(name_or_path)
        model = cls(_config_from_hf(folder), **kwargs)
        ours = model.state_dict()
        sd = _rename_hf(_read_hf_weights(folder), ours)
        prefixes = ("mlm.", "nsp.", "classifier.")  # the heads; everything else is the encoder
        missing, unused = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
        if [k for k in missing if not k.startswith(prefixes)]:
            raise ValueError(f"{folder}: encoder weights missing from the checkpoint: {missing[:5]} ...")
        if [k for k in unused if not k.startswith(prefixes)]:
            raise ValueError(f"{folder}: checkpoint weights that BERT does not have: {unused[:5]} ...")
        for k in set(sd) & set(ours):
            if sd[k].shape != ours[k].shape:
                raise ValueError(f"{folder}: {k} has shape {tuple(sd[k].shape)}, the config gives {tuple(ours[k].shape)}")
        with torch.no_grad():
            for k in set(sd) & set(ours):
                ours[k].copy_(sd[k])
        if verbose and missing:
            print(f"{name_or_path}: no weights for {', '.join(missing)}; initialised fresh (train before use)")
        if verbose and unused:
            print(f"{name_or_path}: unused checkpoint weights: {', '.join(unused)}")
        return model


class BertModel(_Base):
    """The encoder: embeddings, n_layer blocks, and the pooler (dense + tanh on [CLS])."""

    def __init__(self, config, init_weights=True):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)       # token
        self.wpe = nn.Embedding(config.max_positions, config.n_embd)       # absolute position
        self.wtt = nn.Embedding(config.type_vocab_size, config.n_embd)  # token type (segment)
        self.ln_emb = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.pooler = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        if init_weights:  # False inside a model with heads, which initialises everything once
            self.apply(self._init_weights)

    def forward(self, idx, token_type_ids=None, attention_mask=None):
        """idx (B, T) token ids; token_type_ids (B, T) segment ids, None for all zeros;
        attention_mask (B, T), 1 for real tokens and 0 for padding, None when nothing is padded.
        Returns the hidden states (B, T, C) and the pooled [CLS] vector (B, C)."""
        B, T = idx.size()
        if not torch.compiler.is_compiling():  # checks that would cost a graph break in a compiled step
            self._check_inputs(idx, token_type_ids)
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        x = x + (self.wtt.weight[0] if token_type_ids is None else self.wtt(token_type_ids))
        x = self.drop(self.ln_emb(x))
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for block in self.h:
            x = block(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return x, pooled

    def _check_inputs(self, idx, token_type_ids):
        c = self.config
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        if idx.size(1) > c.max_positions:
            raise ValueError(f"sequence of {idx.size(1)} tokens is longer than max_positions {c.max_positions}; truncate it")
        if idx.numel() and (idx.min() < 0 or idx.max() >= c.vocab_size):
            raise ValueError(f"token ids must lie in [0, {c.vocab_size}), got [{idx.min().item()}, {idx.max().item()}]: "
                             "is the tokenizer the one this model was trained with?")
        if token_type_ids is not None and token_type_ids.numel() and (token_type_ids.min() < 0 or token_type_ids.max() >= c.type_vocab_size):
            raise ValueError(f"token_type_ids must lie in [0, {c.type_vocab_size})")

    @torch.no_grad()
    def sentence_embedding(self, idx, token_type_ids=None, attention_mask=None, pooling="cls"):
        """One vector per sequence: the pooled [CLS] vector ("cls"), or the mean of the hidden states
        over real tokens ("mean"), which is usually the better sentence embedding without fine-tuning."""
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        hidden, pooled = self(idx, token_type_ids, attention_mask)
        return pooled if pooling == "cls" else mean_pool(hidden, attention_mask)


# -----------------------------------------------------------------------------
# Heads

def max_predictions_for(block_size, mask_prob):
    """The static number of MLM predictions per row (BERT's max_predictions_per_seq): the head runs on
    this many positions, and masking never chooses more."""
    return math.ceil(mask_prob * block_size)


def gather_masked(labels, n):
    """The first n positions of each row whose label is not -100, in position order, and their labels
    (-100 in slots that a row with fewer masks leaves unused). A fixed n keeps shapes static under
    torch.compile; masks beyond n in a row are dropped, so the masking code caps them at n."""
    pos = (labels == -100).to(torch.uint8).argsort(dim=1, stable=True)[:, :n]  # masked positions sort first
    return pos, labels.gather(1, pos)


class MLMHead(nn.Module):
    """dense + GELU + LayerNorm, then the decoder: the token embedding matrix (tied) plus a bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.ln = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, wte):
        return F.linear(self.ln(F.gelu(self.dense(x))), wte, self.bias)


class BertForPreTraining(_Base):
    """BERT with its two pretraining heads: masked language model and next sentence prediction."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, init_weights=False)
        self.mlm = MLMHead(config)
        self.nsp = nn.Linear(config.n_embd, 2)  # label 0: B follows A (IsNext), 1: B is random
        self.apply(self._init_weights)

    def forward(self, idx, token_type_ids=None, attention_mask=None, mlm_labels=None, nsp_labels=None,
                max_predictions=None):
        """Returns (mlm_logits, nsp_logits, loss). mlm_labels (B, T) hold the original token at masked
        positions and -100 elsewhere. Given max_predictions P, the MLM head runs on the first P masked
        positions of each row only (the decoder over 50k words is the costliest part of a small BERT)
        and mlm_logits is (B, P, V), lined up with gather_masked(mlm_labels, P); else (B, T, V)."""
        hidden, pooled = self.bert(idx, token_type_ids, attention_mask)
        nsp_logits = self.nsp(pooled)
        targets = mlm_labels
        if mlm_labels is not None and max_predictions is not None:
            pos, targets = gather_masked(mlm_labels, max_predictions)
            hidden = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))  # (B, P, C)
        mlm_logits = self.mlm(hidden, self.bert.wte.weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(mlm_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        if nsp_labels is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
            loss = nsp_loss if loss is None else loss + nsp_loss
        return mlm_logits, nsp_logits, loss


class BertForSequenceClassification(_Base):
    """A sequence vector into n_labels classes, or one number when n_labels is 1 (regression). The vector
    is BERT's pooled [CLS] ("cls", as in the paper and in HuggingFace checkpoints), or the mean of the
    hidden states over real tokens ("mean"), which needs no pretrained pooler."""

    def __init__(self, config, n_labels=2, pooling="cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.config = config
        self.n_labels = n_labels
        self.pooling = pooling
        self.bert = BertModel(config, init_weights=False)
        self.drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, n_labels)
        self.apply(self._init_weights)
        if pooling == "mean":  # the pooler's output is not read: frozen, so that DDP sees no unused parameters
            self.bert.pooler.requires_grad_(False)

    def forward(self, idx, token_type_ids=None, attention_mask=None, labels=None):
        hidden, pooled = self.bert(idx, token_type_ids, attention_mask)
        if self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        logits = self.classifier(self.drop(pooled))
        loss = None
        if labels is not None and self.n_labels == 1:
            loss = F.mse_loss(logits[:, 0].float(), labels.float())
        elif labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        return logits, loss


def mean_pool(hidden, attention_mask=None):
    """(B, T, C) hidden states -> (B, C), the mean over real tokens (attention_mask 1), or over all."""
    if attention_mask is None:
        return hidden.mean(1)
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1)


# -----------------------------------------------------------------------------
# Speed: peak FLOPs of known devices, for MFU

PEAK_BF16_FLOPS = {  # dense tensor-core bf16 from the vendors' data sheets, by torch.cuda.get_device_name()
    "NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA GH200 480GB": 989e12,
    "NVIDIA H100 NVL": 835e12, "NVIDIA H100 PCIe": 756e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12,
    "NVIDIA A100-PCIE-40GB": 312e12, "NVIDIA A10G": 70e12, "NVIDIA A10": 125e12,
    "NVIDIA L40S": 362e12, "NVIDIA L40": 181e12, "NVIDIA L4": 121e12,
    "NVIDIA GeForce RTX 4090": 165e12, "NVIDIA GeForce RTX 3090": 71e12,
}


def peak_flops(device_type):
    """bf16 peak of the current CUDA device, or None (CPU, MPS, or a GPU not in the table: exact names
    only, since "NVIDIA L4" is a substring of "NVIDIA L40S" and an H100 PCIe is not an H100 SXM)."""
    if device_type != "cuda" or not torch.cuda.is_available():
        return None
    return PEAK_BF16_FLOPS.get(torch.cuda.get_device_name().strip())


# -----------------------------------------------------------------------------
# Loading HuggingFace BERT checkpoints (no transformers needed)

def looks_local(name):
    """Whether name can only be a path on this machine, never a hub name ('bert-base-uncased',
    'google/bert_uncased_L-2_H-128_A-2'): it starts with '.', '/', '~' or 'out' (a run folder), ends
    with '.pt' or a separator, or has more than one '/'."""
    return (name.startswith((".", "/", "~", "out")) or name.endswith((".pt", "/", os.sep))
            or name.count("/") > 1 or "\\" in name)


def resolve_checkpoint(name_or_path):
    """A local checkpoint folder as is; a hub name downloaded (config, vocabulary, weights) to the cache.
    A name that can only be local and is not here is an error at once, never a request to the hub."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise ValueError(f"{name_or_path} is a file, not a checkpoint folder")
    if looks_local(name_or_path):
        raise ValueError(f"no folder {name_or_path} here: point at a run folder that holds ckpt.pt (train.py's out_dir, "
                         "e.g. out-tiny for config/bert_tiny.py) or a HuggingFace BERT folder")
    try:
        from huggingface_hub import hf_hub_download  # only needed for hub names; comes with `datasets`
    except ImportError:
        raise ImportError(f"{name_or_path} is not a local folder, and downloading from the hub needs "
                         "huggingface_hub: pip install huggingface_hub")
    try:
        config = hf_hub_download(name_or_path, "config.json")
        for optional in ("vocab.txt", "tokenizer_config.json"):
            try:
                hf_hub_download(name_or_path, optional)
            except Exception:
                pass  # an encoder without its vocabulary still loads; the tokenizer says what is missing
        try:
            hf_hub_download(name_or_path, "model.safetensors")
        except Exception:
            hf_hub_download(name_or_path, "pytorch_model.bin")
    except Exception as e:
        raise ValueError(f"could not get '{name_or_path}' from the HuggingFace hub ({type(e).__name__}). "
                         "Check the name, or, offline, pass a local folder holding config.json and "
                         "model.safetensors or pytorch_model.bin")
    return os.path.dirname(config)


def _config_from_hf(folder):
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} is not a BERT checkpoint folder: it has no config.json")
    with open(path) as f:
        hf = json.load(f)
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"{folder} holds a '{hf['model_type']}' model, not BERT")
    if hf.get("hidden_act", "gelu") != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{folder}: only exact GELU and absolute positions are supported, as in BERT")
    try:
        return BertConfig(max_positions=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                          n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                          n_embd=hf["hidden_size"], ffn=hf["intermediate_size"],
                          type_vocab_size=hf.get("type_vocab_size", 2), dropout=hf.get("hidden_dropout_prob", 0.1),
                          layer_norm_eps=hf.get("layer_norm_eps", 1e-12), bias=True,
                          init_std=hf.get("initializer_range", 0.02))
    except KeyError as e:
        raise ValueError(f"{path} lacks {e}: not a BERT config")


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}


def _read_safetensors(path):
    # the format: 8-byte little-endian header length, a JSON header, then the raw tensor bytes
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    sd = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        start, end = v["data_offsets"]
        dtype = SAFETENSORS_DTYPES[v["dtype"]]
        sd[k] = torch.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start).reshape(v["shape"]) \
            if end > start else torch.empty(v["shape"], dtype=dtype)
    return sd


def _read_hf_weights(folder):
    if os.path.isfile(os.path.join(folder, "model.safetensors")):
        return _read_safetensors(os.path.join(folder, "model.safetensors"))
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        return torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise ValueError(f"{folder} is not a BERT checkpoint folder: no model.safetensors or pytorch_model.bin")


# HuggingFace name prefix -> ours; {i} is the layer. q, k and v are concatenated below.
_HF_RENAMES = {
    "bert.embeddings.word_embeddings.": "bert.wte.",
    "bert.embeddings.position_embeddings.": "bert.wpe.",
    "bert.embeddings.token_type_embeddings.": "bert.wtt.",
    "bert.embeddings.LayerNorm.": "bert.ln_emb.",
    "bert.encoder.layer.{i}.attention.output.dense.": "bert.h.{i}.attn.proj.",
    "bert.encoder.layer.{i}.attention.output.LayerNorm.": "bert.h.{i}.ln_1.",
    "bert.encoder.layer.{i}.intermediate.dense.": "bert.h.{i}.mlp.fc.",
    "bert.encoder.layer.{i}.output.dense.": "bert.h.{i}.mlp.proj.",
    "bert.encoder.layer.{i}.output.LayerNorm.": "bert.h.{i}.ln_2.",
    "bert.pooler.dense.": "bert.pooler.",
    "cls.predictions.transform.dense.": "mlm.dense.",
    "cls.predictions.transform.LayerNorm.": "mlm.ln.",
    "cls.predictions.bias": "mlm.bias",
    "cls.seq_relationship.": "nsp.",
}


def _rename_hf(hf, ours):
    """Map a HuggingFace BERT state dict onto our names; `ours` is the target model's state dict."""
    sd = {}
    for k, v in hf.items():
        prefix, _, last = k.rpartition(".")
        if last in ("gamma", "beta"):  # LayerNorm names of old checkpoints
            k = prefix + (".weight" if last == "gamma" else ".bias")
        if k.startswith(("embeddings.", "encoder.", "pooler.")):
            k = "bert." + k  # a bare BertModel checkpoint
        if k.endswith(("position_ids", "token_type_ids")):
            continue  # buffers, not weights
        if k == "cls.predictions.decoder.weight":
            continue  # tied to the token embedding
        if k == "cls.predictions.decoder.bias":
            k = "cls.predictions.bias"  # the same tensor, saved twice by newer versions
        i = k.split(".")[3] if k.startswith("bert.encoder.layer.") else None  # None matches no {i} prefix
        for theirs, mine in _HF_RENAMES.items():
            theirs, mine = theirs.format(i=i), mine.format(i=i)
            if k.startswith(theirs):
                k = mine + k.removeprefix(theirs)
                break
        sd[k] = v
    # query, key and value become one (3C, C) matmul
    for i in {k.split(".")[3] for k in sd if k.startswith("bert.encoder.layer.") and ".attention.self." in k}:
        for kind in ("weight", "bias"):
            parts = [sd.pop(f"bert.encoder.layer.{i}.attention.self.{n}.{kind}", None) for n in ("query", "key", "value")]
            if all(p is not None for p in parts):
                sd[f"bert.h.{i}.attn.qkv.{kind}"] = torch.cat(parts)
            elif any(p is not None for p in parts):
                raise ValueError(f"layer {i}: the checkpoint holds only some of query/key/value {kind}")
    if not any(k.startswith("bert.") for k in ours):  # loading into a bare BertModel
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    return sd


def to_hf_state_dict(sd):
    """The inverse of loading: our BertForPreTraining or BertForSequenceClassification state dict under
    HuggingFace's names, as transformers saves it (q, k and v apart; no decoder weight or bias, which
    transformers ties to the token embedding and to cls.predictions.bias). Tensors are views of ours."""
    hf = {}
    for k, v in sd.items():
        i = k.split(".")[2] if k.startswith("bert.h.") else None  # None matches no {i} prefix
        prefix, _, kind = k.rpartition(".")
        if prefix == f"bert.h.{i}.attn.qkv":
            for name, part in zip(("query", "key", "value"), v.chunk(3)):
                hf[f"bert.encoder.layer.{i}.attention.self.{name}.{kind}"] = part
            continue
        for theirs, mine in _HF_RENAMES.items():
            theirs, mine = theirs.format(i=i), mine.format(i=i)
            if k.startswith(mine):
                k = theirs + k.removeprefix(mine)
                break
        hf[k] = v  # classifier.* has the same name in both
    return hf

"""
Training-step speed: forward, backward and optimizer step on a fixed synthetic pretraining batch.

    python bench.py                                   # bert_tiny shapes on this device
    python bench.py --model=small --compare_hf=True   # and transformers' BertForPreTraining, same run
    python bench.py --model=base --batch_size=256 --compile=True --compare_hf=True   # on a GPU: bf16
    python bench.py --profile=True                    # and where our step's time goes, op by op
    python bench.py --compare_vocab_size=8192         # ours with GPT-2's 50,304 rows and with 8,192, same run
    python bench.py --init_from=out-tiny              # the shape and vocabulary of one of our checkpoints

Both models see identical shapes, vocabulary, batch, masking (mask_prob of each row, [MASK] inputs)
and NSP labels, the same AdamW and the same precision. Warm-up steps (compilation included) are not
timed; the reported time is the median of the timed steps.
"""
import importlib.util
import resource
import time

import torch

import runtime
from configurator import read_settings, require
from model import BertConfig, BertForPreTraining, max_predictions_for
from tokenizer import GPT2Tokenizer

# -----------------------------------------------------------------------------
model = "tiny"          # tiny (2 x 128), small (4 x 512), base (12 x 768); n_layer etc. below override
n_layer = 0             # 0: from the preset
n_head = 0
n_embd = 0
vocab_size = 0          # embedding rows; 0: GPT-2's 50,304
compare_vocab_size = 0  # also time ours with this many rows in the same run, e.g. 8192 (a vocabulary trained by prepare.py)
init_from = ""          # one of our run folders: time its shape and vocabulary instead of the settings above
batch_size = 32
block_size = 128
mask_prob = 0.15
dropout = 0.1
device = "auto"         # auto, cpu, cuda, mps
dtype = "auto"          # auto: bf16 on cuda where supported, else fp16 there; fp32 elsewhere
compile = False         # torch.compile both models' forward
warmup = 3
steps = 10
compare_hf = False      # also time transformers' BertForPreTraining (test-only dependency)
hf_compile = None       # compile transformers' model too; None: the same as compile
profile = False         # also print where our step's time goes: the ops with the most self time
seed = 1337
# -----------------------------------------------------------------------------
PRESETS = {"tiny": (2, 2, 128), "small": (4, 8, 512), "base": (12, 12, 768)}


def make_batch(B, T, P, V, generator, dev):
    """Random ids of V - 1 rows, exactly P masked positions per row (all [MASK] inputs: the last row), NSP labels."""
    idx = torch.randint(0, V - 1, (B, T), generator=generator)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    pos = torch.rand(B, T - 1, generator=generator).argsort(dim=1)[:, :P] + 1  # never [CLS]'s slot
    labels = torch.full((B, T), -100, dtype=torch.long)
    labels.scatter_(1, pos, idx.gather(1, pos))
    idx = idx.scatter(1, pos, V - 1)
    nsp = torch.randint(0, 2, (B,), generator=generator)
    return [t.to(dev) for t in (idx, types, labels, nsp)]


def time_steps(step, sync, n_warmup, n_steps):
    for _ in range(n_warmup):
        step()
    sync()
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_flops(dev, dt, sync, n=4096 if torch.cuda.is_available() else 2048):
    """FLOP/s of a plain large matmul in the benchmark's precision: the practical ceiling here."""
    a, b = (torch.randn(n, n, device=dev, dtype=dt) for _ in range(2))
    t = time_steps(lambda: a @ b, sync, 2, 5)
    return 2 * n ** 3 / t


def print_profile(step, sync, dev_type, n=3, top=15):
    """The ops (CUDA kernels on a GPU) with the most self time in n steps, per step."""
    from torch.profiler import ProfilerActivity
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA if dev_type == "cuda" else ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
        sync()
    self_time = (lambda e: e.self_device_time_total) if dev_type == "cuda" else (lambda e: e.self_cpu_time_total)
    ops = sorted(prof.key_averages(), key=self_time, reverse=True)
    total = sum(self_time(e) for e in ops)
    print(f"profile: {total / n / 1000:.1f} ms of {dev_type} time per step; the ops with the most self time:")
    for e in ops[:top]:
        print(f"{self_time(e) / n / 1000:10.2f} ms {100 * self_time(e) / total:5.1f}% {e.count // n:4d}x  {e.key[:90]}")


def peak_memory(dev_type):
    if dev_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark, MiB


def check_settings(cfg):
    p = []
    if cfg.model not in PRESETS:
        p.append(f"model must be one of {', '.join(PRESETS)}, got {cfg.model!r}")
    for name in ("batch_size", "block_size", "steps"):
        if getattr(cfg, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("n_layer", "n_head", "n_embd", "warmup", "vocab_size", "compare_vocab_size"):
        if getattr(cfg, name) < 0:
            p.append(f"{name} must not be negative, got {getattr(cfg, name)}")
    for name in ("vocab_size", "compare_vocab_size"):
        if 0 < getattr(cfg, name) < 128:
            p.append(f"{name} must be 0 or at least 128, got {getattr(cfg, name)}")
    if not 0 < cfg.mask_prob <= 1:
        p.append(f"mask_prob must be in (0, 1], got {cfg.mask_prob}")
    if not 0 <= cfg.dropout < 1:
        p.append(f"dropout must be in [0, 1), got {cfg.dropout}")
    p.append(runtime.check_dtype(cfg.dtype))
    p.append(runtime.check_device(cfg.device))
    if cfg.hf_compile not in (None, True, False):
        p.append(f"hf_compile must be None (as compile), True or False, got {cfg.hf_compile!r}")
    if cfg.compare_hf and importlib.util.find_spec("transformers") is None:
        p.append("compare_hf=True needs transformers (a test-only dependency): pip install transformers")
    return p


def main(argv=None):
    c, _ = read_settings(globals(), argv)
    require(check_settings(c))
    L, H, C = PRESETS[c.model]
    try:
        if c.init_from:
            cfg = BertConfig(**runtime.load_checkpoint(c.init_from)["model_config"])
            cfg = BertConfig(**{**vars(cfg), "dropout": c.dropout, "max_positions": max(cfg.max_positions, c.block_size)})
        else:
            cfg = BertConfig(max_positions=max(c.block_size, 128), vocab_size=c.vocab_size or GPT2Tokenizer().rows,
                             n_layer=c.n_layer or L, n_head=c.n_head or H, n_embd=c.n_embd or C, dropout=c.dropout)
    except ValueError as e:
        raise SystemExit(str(e))
    device = runtime.pick_device(c.device)
    dev_type = device.split(":")[0]
    ctx, _ = runtime.autocast_and_scaler(dev_type, c.dtype)  # fp16 is timed without loss scaling
    pt_dtype = runtime.precision(ctx)
    dtype = str(pt_dtype).removeprefix("torch.")
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)
    kept = runtime.speed_settings(dev_type)  # as in train.py, for both models
    torch.manual_seed(c.seed)
    B, T = c.batch_size, c.block_size
    P = max_predictions_for(T, c.mask_prob)  # masked positions per row, the sparse MLM head's fixed width
    batch = lambda V: make_batch(B, T, P, V, torch.Generator().manual_seed(c.seed), device)
    idx, types, labels, nsp = batch(cfg.vocab_size)
    print(f"{c.init_from or c.model}: {cfg.n_layer} layers, {cfg.n_embd} wide, {cfg.n_head} heads, vocab {cfg.vocab_size}; "
          f"batch {B} x {T} tokens, {P} masked per row; {device}, {dtype}, compile={c.compile}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads" + ("; malloc keeps freed memory" if kept else ""))

    def run(name, net, forward, compiled):
        net.to(device).train()
        opt = net.configure_optimizers(0.01, 1e-4, (0.9, 0.999), dev_type) if hasattr(net, "configure_optimizers") \
            else torch.optim.AdamW(net.parameters(), lr=1e-4, fused=dev_type in ("cuda", "cpu"))
        fwd = torch.compile(forward) if compiled else forward

        def step():
            with ctx:
                loss = fwd(net)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if dev_type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time_steps(step, sync, c.warmup, c.steps)
        result = {"name": name, "ms": 1000 * t, "tok_s": B * T / t, "mem": peak_memory(dev_type)}
        if c.profile and net is ours:
            print_profile(step, sync, dev_type)
        return result

    ours = BertForPreTraining(cfg)
    mlm_fraction = P / T
    results = [run("nanoBERT", ours, lambda m: m(idx, types, None, labels, nsp, max_predictions=P)[2], c.compile)]
    if c.compare_vocab_size:
        small = BertForPreTraining(BertConfig(**{**vars(cfg), "vocab_size": c.compare_vocab_size}))
        b = batch(c.compare_vocab_size)
        results.append(run(f"nanoBERT, vocab {c.compare_vocab_size}", small,
                           lambda m: m(b[0], b[1], None, b[2], b[3], max_predictions=P)[2], c.compile))
        results[-1]["mfu"] = small.estimate_mfu(results[-1]["tok_s"], T, dev_type, mlm_fraction)
    flops = ours.flops_per_token(T, mlm_fraction) * results[0]["tok_s"]
    results[0]["mfu"] = ours.estimate_mfu(results[0]["tok_s"], T, dev_type, mlm_fraction)
    if c.compare_hf:
        import transformers  # test-only dependency, the reference we compare against
        hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                         num_attention_heads=cfg.n_head, intermediate_size=cfg.ffn,
                                         max_position_embeddings=cfg.max_positions, hidden_dropout_prob=c.dropout,
                                         attention_probs_dropout_prob=c.dropout, attn_implementation="sdpa")
        hf = transformers.BertForPreTraining(hf_cfg)
        compiled = c.compile if c.hf_compile is None else c.hf_compile
        name = f"transformers {transformers.__version__}{' compiled' if compiled else ''}"
        results.append(run(name, hf, lambda m: m(
            input_ids=idx, token_type_ids=types, labels=labels, next_sentence_label=nsp).loss, compiled))
        # the reference runs the MLM decoder on every position: count the FLOPs it really does
        results[-1]["mfu"] = ours.estimate_mfu(results[-1]["tok_s"], T, dev_type, 1.0)
    print(f"{'':>33} {'ms/step':>9} {'tokens/s':>10} {'MFU':>6} {'peak MiB':>9}")
    for r in results:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"{r['name']:>33} {r['ms']:9.1f} {r['tok_s']:10.0f} {mfu:>6} {r['mem']:9.0f}")
    if c.compare_vocab_size:
        print(f"vocab {c.compare_vocab_size} against {cfg.vocab_size}: {results[1]['tok_s'] / results[0]['tok_s']:.2f}x "
              "the tokens per second")
    if c.compare_hf:
        print(f"speed-up over transformers: {results[0]['tok_s'] / results[-1]['tok_s']:.2f}x")
    ceiling = matmul_flops(device, pt_dtype if dev_type == "cuda" else torch.float32, sync)
    print(f"model FLOP/s {flops / 1e12:.3f} T = {100 * flops / ceiling:.0f}% of a large {dtype} matmul "
          f"on this device ({ceiling / 1e12:.3f} TFLOP/s)")


if __name__ == "__main__":
    runtime.run(main)

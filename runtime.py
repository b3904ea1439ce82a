"""
How a script here runs: processes, device, precision, the learning-rate schedule, the optimizer step,
and checkpoint files. train.py, finetune.py, sample.py, bench.py, export.py and plot.py import it;
scripts never import each other.

A checkpoint is one torch.save'd dict, written atomically, that says what wrote it ("kind":
"pretraining" from train.py, "finetuning" from finetune.py) and carries a SHA-256 of everything in it,
checked on load: a flipped or zeroed byte is found before it is trained on or sampled from.
"""
import atexit
import ctypes
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import sys
from contextlib import nullcontext

import torch

# -----------------------------------------------------------------------------
# Processes and devices

def init_distributed():
    """(ddp, rank, local_rank, world_size). Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment,
    one node or many) joins the process group, which is destroyed when the process exits, whichever
    way it exits (NCCL asks for that); otherwise a single process: (False, 0, 0, 1)."""
    if "RANK" not in os.environ:
        return False, 0, 0, 1
    import torch.distributed as dist
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():  # a second main() in the same process keeps the group
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return True, rank, local_rank, world_size


DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N


def check_device(device):
    """A message if device names no device this machine has, else None. For settings checks."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        return f"device must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}"
    if device.startswith("cuda:") and "RANK" in os.environ:
        return (f"device={device!r}: under torchrun every process takes the GPU of its LOCAL_RANK; use --device=cuda "
                "(and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"device={device!r} but torch sees no CUDA GPU; use --device=auto or --device=cpu"
    if device == "mps" and not torch.backends.mps.is_available():
        return "device='mps' but torch sees no Apple GPU; use --device=auto or --device=cpu"
    return None


def pick_device(device="auto", local_rank=0):
    """'auto' -> 'cuda:<local_rank>', else 'mps', else 'cpu'. 'cuda' means this process's GPU."""
    problem = check_device(device)
    if problem:
        raise SystemExit(problem)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # so that synchronize(), memory stats and the device name are this GPU's
    return device


def setup(device="auto", dtype="auto", local_rank=0):
    """This process's device, its type, the autocast context and the GradScaler, with the speed settings
    made: what every script that trains or evaluates starts with."""
    device = pick_device(device, local_rank)
    device_type = device.split(":")[0]
    ctx, scaler = autocast_and_scaler(device_type, dtype)
    speed_settings(device_type)
    return device, device_type, ctx, scaler


def wrap(model, compile, ddp, device_type, local_rank=0):
    """(the model to train, the model to evaluate) around the plain module, which is what checkpoints
    save. compile=None compiles where it pays: on CUDA. On a CPU a short run spends more time compiling
    than it saves (one fine-tuning epoch: 128 s compiled against 10 s eager, on 2 cores). Evaluation
    has no gradients to all-reduce, so it skips the DDP wrapper."""
    if compile is None:
        compile = device_type == "cuda"
    model = torch.compile(model) if compile else model
    eval_model = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    return model, eval_model


def any_process(flags, device, ddp):
    """Each flag, true if it is true on any process: so that all processes stop together and none is
    left waiting in an all-reduce. One host-device sync."""
    t = torch.tensor([float(f) for f in flags], device=device)
    if ddp:
        import torch.distributed as dist
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]


def keep_freed_memory():
    """On a CPU under Linux, make malloc keep big freed buffers for reuse. glibc gives every block over
    its mmap threshold (128 KiB, rising to 32 MiB at most) a mapping of its own and unmaps it when it is
    freed: the MLM logits, the larger activations and gradients. The next step page-faults them in
    again, zero-filled, and that was a third of a bert_tiny training step on two cores. The cost:
    resident memory stays at its peak. Returns whether the setting took (False without glibc)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # <malloc.h>; see `man mallopt`
    # never mmap a block on its own, and never shrink the heap (a threshold of -1 turns trimming off)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))


def speed_settings(device_type):
    """The process-wide speed settings: TF32 for the fp32 matmuls outside autocast on a GPU; on a CPU,
    malloc keeps freed memory. Returns whether it does."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device_type == "cpu" and keep_freed_memory()


DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_dtype(dtype):
    """A message if dtype is not one of DTYPES, else None. For settings checks."""
    return None if dtype in DTYPES else f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}"


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """Whether this CPU does bf16 arithmetic in hardware: torch runs its AVX-512 kernels here and Linux
    lists AVX512-BF16 or AMX among the CPU's flags. Elsewhere bf16 is emulated, and slow: one step of
    config/bert_transfer.py took 114 s in bf16 against 1.75 s in fp32 on an AVX2-only EPYC, where an
    EPYC with AVX512-BF16 took 0.48 s against 0.96 s. ATEN_CPU_CAPABILITY=avx2 turns it off."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux
        return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(flags)


def autocast_and_scaler(device_type, dtype="auto"):
    """The mixed-precision context for forward passes and the GradScaler for backward. 'auto': bf16 on
    GPUs that have it, fp16 (with loss scaling) on older GPUs, bf16 on CPUs that have it in hardware
    (cpu_has_bf16), fp32 on other CPUs and on MPS. The fp32 case gets a null context and a disabled
    scaler, so the training loop has a single path."""
    if check_dtype(dtype):
        raise SystemExit(check_dtype(dtype))
    if dtype == "auto":  # emulated bf16 (V100, T4, most CPUs) is slow: GPUs take fp16 with loss scaling
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
        else:
            dtype = "bfloat16" if device_type == "cpu" and cpu_has_bf16() else "float32"
    elif dtype == "bfloat16" and device_type == "cpu" and not cpu_has_bf16() and int(os.environ.get("RANK", 0)) == 0:
        print("warning: no bf16 in this CPU's hardware was found (AVX512-BF16 or AMX, on Linux), so bfloat16 is likely "
              "emulated, which can be tens of times slower than float32: use --dtype=auto or --dtype=float32", file=sys.stderr)
    ptdtype = getattr(torch, dtype)
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type=device_type, dtype=ptdtype)
    # fp16 has too little range for raw gradients; bf16 and fp32 do not need scaling
    scaler = torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16)
    return ctx, scaler


def precision(ctx):
    """The dtype that forward passes under ctx (from autocast_and_scaler) compute their matmuls in."""
    return getattr(ctx, "fast_dtype", torch.float32)  # the float32 case is a null context


def to_device(batch, device):
    """A dict of CPU tensors (or None) onto device; on a GPU from pinned memory, so that the copy
    overlaps the step that is running."""
    if device.startswith("cuda"):
        return {k: None if v is None else v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: None if v is None else v.to(device) for k, v in batch.items()}


# -----------------------------------------------------------------------------
# Optimization

DECAYS = ("linear", "cosine")


def get_lr(step, learning_rate, warmup_steps, max_steps, min_lr, decay="linear"):
    """Linear warmup from 0, then linear (BERT) or cosine decay to min_lr at max_steps."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / (warmup_steps + 1)
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    coeff = 1.0 - ratio if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def optimizer_step(optimizer, scaler, params, grad_clip):
    """Unscale (fp16 only), clip the global gradient norm, step, and clear the gradients."""
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def all_finite(module):
    return bool(torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all())  # one sync


def diverged(problem, ckpt_path):
    """The one message for a run whose loss, weights or outputs turned NaN/inf: what is kept, what to do.
    A resumed run would take the same steps again, so the advice is to start again."""
    kept = f"{ckpt_path} is kept as it was" if os.path.exists(ckpt_path) else "nothing was saved"
    return SystemExit(f"{problem}: training diverged, and {kept}. Start again with a lower learning_rate")


# -----------------------------------------------------------------------------
# Files

KINDS = {"pretraining": "train.py", "finetuning": "finetune.py"}


def describe(error):
    """An exception in one short line, for a message: 'RuntimeError: the first line of what it says'."""
    first_line = str(error).split("\n", 1)[0][:200]
    return f"{type(error).__name__}: {first_line}"


def checksum(ckpt):
    """SHA-256 over everything in a checkpoint, in a fixed order: every tensor (name, dtype, shape and
    bytes) and every other value (step, settings, labels...)."""
    h = hashlib.sha256()

    def walk(name, obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{obj.dtype}:{tuple(obj.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(f"{name}.{k}", obj[k])
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{name}.{i}", v)
        else:
            h.update(f"{name}={obj!r};".encode())
    walk("", {k: v for k, v in ckpt.items() if k != "checksum"})
    return h.hexdigest()


def write_atomic(path, write):
    """write(tmp_path) into a temporary file beside path, flushed to disk, then renamed over path: a
    crash midway leaves the previous file intact, and a failed write (a full disk) removes its
    temporary file and says so. torch.save reports a full disk as a RuntimeError ("unexpected pos"),
    not an OSError, hence the free space in the message."""
    tmp = path + ".tmp"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)  # the folder, so that a power cut cannot undo the rename
        finally:
            os.close(fd)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, Exception):
            raise  # Ctrl-C: stop as asked
        reason = e.strerror if isinstance(e, OSError) and e.strerror else describe(e)
        folder = os.path.dirname(os.path.abspath(path))
        free = f"{shutil.disk_usage(folder).free / 2 ** 20:,.0f} MiB free on its disk" if os.path.isdir(folder) \
            else f"{folder} does not exist"
        raise SystemExit(f"could not write {path} ({reason}; {free}); "
                         f"{'the previous file is kept' if os.path.exists(path) else 'nothing was written'}")


def write_bytes(path, data):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomic(path, write)


def read_log(path):
    """The records of a log.jsonl (train.py's, finetune.py's), in order; a line cut short by a crash is skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and isinstance(r.get("step"), int):
                records.append(r)
    return records


def open_log(path, over_earlier_run, records=()):
    """A run's log.jsonl for appending, starting with records. Over an earlier run (its checkpoint beside
    it, overwrite=True) the log is log.jsonl.new until keep_log() after this run's first save: a run that
    stops before that leaves the earlier run's checkpoint and log as they were."""
    if over_earlier_run:
        path += ".new"
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return open(path, "a")


def write_log(log_file, record, wandb=None):
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if wandb:
        wandb.log(record, step=record["step"])


def keep_log(log_file, path):
    """After a save: the log of open_log() at path, moved over the earlier run's log if it is not there yet."""
    if log_file.name == path:
        return log_file
    log_file.close()
    os.replace(log_file.name, path)
    return open(path, "a")


def save_checkpoint(ckpt, path):
    """Atomically, with the checksum of its tensors. ckpt["kind"] says which tool wrote it."""
    assert ckpt.get("kind") in KINDS, "a checkpoint says what wrote it"
    ckpt = {**ckpt, "checksum": checksum(ckpt)}
    write_atomic(path, lambda tmp: torch.save(ckpt, tmp))


def checkpoint_path(path):
    """A checkpoint's file: path itself (a .pt file), or the ckpt.pt in the folder path."""
    return os.path.join(path, "ckpt.pt") if os.path.isdir(path) or not path.endswith(".pt") else path


def run_folder(path):
    """The folder a checkpoint (path: the file or its folder) lives in, with its log.jsonl."""
    return os.path.dirname(checkpoint_path(path)) or "."


def load_checkpoint(path, kinds=tuple(KINDS), map_location="cpu"):
    """A checkpoint written by save_checkpoint (path: the file or its folder), of one of `kinds`, with one
    clear message for each way it can fail: missing, unreadable, damaged, or from another tool."""
    path = checkpoint_path(path)
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: train one with `python train.py`, or point at a folder "
                         "that holds ckpt.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise SystemExit(f"checkpoint {path} is unreadable ({describe(e)}); "
                         "it may be truncated or from another program. Restore it from a copy, or start without it")
    if not isinstance(ckpt, dict) or {"model", "model_config", "kind", "checksum"} - set(ckpt):
        raise SystemExit(f"{path} is not a checkpoint of this project, or was written by an older version of it")
    if checksum(ckpt) != ckpt["checksum"]:
        raise SystemExit(f"checkpoint {path} is damaged: its tensors do not match the checksum written with them. "
                         "Restore it from a copy")
    if ckpt["kind"] not in kinds:
        want = " or ".join(f"{k} ({KINDS[k]})" for k in kinds)
        raise SystemExit(f"{path} is a {ckpt['kind']} checkpoint ({KINDS.get(ckpt['kind'], '?')}); this needs {want}: "
                         f"point at the out_dir of a {' or '.join(KINDS[k] for k in kinds)} run")
    return ckpt


def model_from_checkpoint(ckpt, path):
    """The model a checkpoint of ours holds, rebuilt from its config: BertForPreTraining (pretraining) or
    BertForSequenceClassification (fine-tuning), with one message if it does not fit this model.py."""
    from model import BertConfig, BertForPreTraining, BertForSequenceClassification
    try:
        config = BertConfig(**ckpt["model_config"])
        model = BertForPreTraining(config) if ckpt["kind"] == "pretraining" else \
            BertForSequenceClassification(config, ckpt["n_labels"], ckpt.get("pooling", "cls"))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise SystemExit(f"{path} does not fit this model.py ({describe(e)}); "
                         "was it written by another version?")
    return model


def refuse_overwrite(path, what, resume_hint=""):
    """One message when a run would replace a file it did not start from."""
    if os.path.exists(path):
        raise SystemExit(f"{path} already holds {what}, which this run would replace: {resume_hint}choose another "
                         "out_dir, or pass --overwrite=True to replace it")


def check_writable(folder):
    """A message if folder cannot be created or written, else None. For settings checks."""
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    probe = probe or "."
    if not os.path.isdir(probe):
        return f"out_dir={folder!r}: {probe} is a file, not a folder; choose another out_dir"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"out_dir={folder!r} is not writable (no write permission on {probe}); choose another out_dir"
    return None


# -----------------------------------------------------------------------------
# Stopping

class StopSignal:
    """SIGTERM (a preempted job) or SIGINT (Ctrl-C) asks a run to save and stop at the next check;
    a second signal acts at once. A run that stopped this way exits with the shell's code for the
    signal (exit_code: 130 for SIGINT, 143 for SIGTERM), so `train.py && finetune.py` does not go on
    from a run that did not finish, and a scheduler can tell a stopped run from a finished one."""

    def __init__(self):
        self.requested, self.exit_code = False, 0
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def handle(self, signum, frame):
        self.requested, self.exit_code = True, 128 + signum
        again = self.previous[signum]
        # SIG_IGN: started as `cmd &` from a script, which ignores SIGINT; None: a handler set outside
        # Python (an embedding program). Either way the second signal acts all the same
        if again in (signal.SIG_IGN, None):
            again = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, again)
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next log step, then stopping "
              "(send it again to stop at once)", flush=True)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None cannot be set back


def run(main):
    """A script's entry point: Ctrl-C ends it with one line instead of a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # files are written atomically, so nothing is half-written
        sys.exit(128 + signal.SIGINT)  # the shell's code for a Ctrl-C

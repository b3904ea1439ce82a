"""runtime.py: checkpoint files (atomic, checksummed, of a known kind) and the stand-ins every script uses."""
import errno
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import runtime  # noqa: E402


def checkpoint(kind="pretraining"):
    torch.manual_seed(0)
    return {"kind": kind, "model": {"w": torch.randn(64, 64), "b": torch.zeros(64, dtype=torch.bfloat16)},
            "model_config": {"n_embd": 64}, "optimizer": {"state": {0: {"exp_avg": torch.randn(64)}}}, "step": 3}


def test_round_trip_and_kind(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    runtime.save_checkpoint(checkpoint(), path)
    ckpt = runtime.load_checkpoint(str(tmp_path))  # the folder is enough
    assert ckpt["step"] == 3 and torch.equal(ckpt["model"]["w"], checkpoint()["model"]["w"])
    assert ckpt["checksum"] == runtime.checksum(ckpt) and len(ckpt["checksum"]) == 64
    with pytest.raises(SystemExit, match=r"is a pretraining checkpoint \(train.py\); this needs finetuning \(finetune.py\)"):
        runtime.load_checkpoint(path, kinds=("finetuning",))
    with pytest.raises(AssertionError):
        runtime.save_checkpoint({**checkpoint(), "kind": None}, path)


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_zeroed_bytes_are_found(tmp_path, where):
    path = tmp_path / "ckpt.pt"
    runtime.save_checkpoint(checkpoint(), str(path))
    data = bytearray(path.read_bytes())
    # a stretch of tensor bytes, found by its content, zeroed: the zip container does not notice
    w = checkpoint()["model"]["w"].numpy().tobytes() if where == 0.5 else checkpoint()["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()
    at = data.find(w) + len(w) // 2
    data[at:at + 64] = bytes(64)
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)  # torch itself reads it without complaint
    with pytest.raises(SystemExit, match="damaged"):
        runtime.load_checkpoint(str(path))


def test_foreign_and_old_files(tmp_path):
    torch.save({"model": {}, "model_config": {}}, tmp_path / "old.pt")  # no kind, no checksum
    with pytest.raises(SystemExit, match="older version"):
        runtime.load_checkpoint(str(tmp_path / "old.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="unreadable"):
        runtime.load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(SystemExit, match="no checkpoint"):
        runtime.load_checkpoint(str(tmp_path / "none"))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    runtime.save_checkpoint(checkpoint(), path)
    before = open(path, "rb").read()

    def disk_full(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit, match="No space left on device.*previous file is kept"):
        runtime.save_checkpoint(checkpoint(), path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_refuse_overwrite_and_writable(tmp_path):
    runtime.refuse_overwrite(str(tmp_path / "nothing"), "a checkpoint")
    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit, match="--overwrite=True"):
        runtime.refuse_overwrite(str(tmp_path / "f"), "a checkpoint")
    assert runtime.check_writable(str(tmp_path / "new" / "deeper")) is None
    assert "is a file" in runtime.check_writable(str(tmp_path / "f" / "out"))


def test_auto_takes_bf16_only_on_a_cpu_that_has_it(tmp_path, monkeypatch, capsys):
    """dtype='auto' on a CPU: bf16 where the CPU does it in hardware (AVX512-BF16 or AMX in Linux's flags,
    AVX-512 kernels in torch), fp32 where bf16 would be emulated (tens of times slower)."""
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for flags, has in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16 amx_tile", True),
                       ("fpu avx2 avx512f avx512_vnni", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert runtime.cpu_has_bf16(str(info)) is has, flags
    assert runtime.cpu_has_bf16(str(tmp_path / "absent")) is False  # not Linux
    info.write_text("flags\t\t: avx2 avx512_bf16\n")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert runtime.cpu_has_bf16(str(info)) is False

    for has, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has)
        ctx, scaler = runtime.autocast_and_scaler("cpu", "auto")
        with ctx:
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == want
        assert not scaler.is_enabled()
    assert "warning" not in capsys.readouterr().err
    runtime.autocast_and_scaler("cpu", "bfloat16")  # asked for on a CPU without it: done, with a warning
    assert "bfloat16 is likely emulated" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # the other processes of a torchrun job: one warning is enough
    runtime.autocast_and_scaler("cpu", "bfloat16")
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("RANK")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    runtime.autocast_and_scaler("cpu", "bfloat16")
    assert capsys.readouterr().err == ""


def test_device_and_dtype_checks():
    assert runtime.check_device("cpu") is None and runtime.check_device("auto") is None
    assert "must be one of" in runtime.check_device("tpu")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in runtime.check_device("cuda:0")
    with pytest.raises(SystemExit, match="dtype must be one of"):
        runtime.autocast_and_scaler("cpu", "float8")


def test_stop_signal_when_the_previous_handler_was_set_outside_python():
    """signal.getsignal gives None for a handler installed from C (an embedding program), and None
    cannot be set back: the second signal must still act, and restore must not raise."""
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = runtime.StopSignal()
    try:
        stop.previous = {s: None for s in stop.previous}
        stop.handle(signal.SIGTERM, None)
        assert stop.requested and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        stop.handle(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the second Ctrl-C raises KeyboardInterrupt
        stop.restore()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_compile_by_default_only_where_it_pays():
    model = torch.nn.Linear(2, 2)
    assert runtime.wrap(model, None, False, "cpu") == (model, model)  # on a CPU a short run compiles longer than it trains
    assert runtime.wrap(model, False, False, "cuda") == (model, model)
    assert runtime.wrap(model, None, False, "cuda")[0] is not model

"""tokenizer.py: without its GPT-2 files, offline, GPT2Tokenizer says what to do, and doing it works."""
import os
import re
import shutil
import socket
import tempfile

import pytest
import tiktoken
import tiktoken.registry

from tokenizer import GPT2Tokenizer


def test_offline_without_the_gpt2_files(tmp_path, monkeypatch):
    real = GPT2Tokenizer()  # the files are where this machine's tiktoken finds them
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), "data-gym-cache")  # tiktoken/load.py
    with socket.socket() as s:  # a port nobody listens on, as the proxy for every download: no network
        s.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for k in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2")  # its copy in memory; restored after the test
    with pytest.raises(SystemExit) as e:
        GPT2Tokenizer()
    msg = str(e.value)
    assert msg.startswith(f"tiktoken cannot load the GPT-2 encoding: its two files are not in {tmp_path / 'empty'} "
                          "and downloading them failed")
    # do what it says: copy the two files under the names it gives, point TIKTOKEN_CACHE_DIR at them
    names = re.search(r"Copy vocab\.bpe and encoder\.json from \S+ to a folder as (\w+) and (\w+) ", msg).groups()
    (tmp_path / "mine").mkdir()
    for name in names:
        shutil.copy(os.path.join(cache, name), tmp_path / "mine" / name)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "mine"))
    tok = GPT2Tokenizer()
    assert tok.encode("hello world") == real.encode("hello world") and tok.enc.eot_token == GPT2Tokenizer.eot

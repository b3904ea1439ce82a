import os
import sys

# tests build their own data and checkpoints; they never need the HuggingFace hub, and this makes a
# hub lookup fail at once instead of after network retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# every machine runs the tests in float32: dtype="auto" takes bf16 only on a CPU where torch uses AVX-512
# (runtime.cpu_has_bf16), and this keeps it to AVX2, here and in the scripts the tests start
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import model, train, ...

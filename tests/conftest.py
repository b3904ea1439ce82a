import os
import sys

# tests build their own data and checkpoints; they never need the HuggingFace hub, and this makes a
# hub lookup fail at once instead of after network retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # import model, train, ...

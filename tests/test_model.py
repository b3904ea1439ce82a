"""model.py against HuggingFace transformers' BERT (the reference), plus the pieces of its own."""
import json
import os
import subprocess
import sys

import pytest
import torch

import model as model_lib
from model import BertConfig, BertForPreTraining, BertForSequenceClassification, BertModel, gather_masked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=101, max_positions=32, n_layer=2, n_head=4, n_embd=32, ffn=48, dropout=0.0)
HF_TINY = dict(vocab_size=101, max_position_embeddings=32, num_hidden_layers=2, num_attention_heads=4,
               hidden_size=32, intermediate_size=48, hidden_act="gelu", layer_norm_eps=1e-12,
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=2)


def hf_model(cls_name="BertForPreTraining", seed=0):
    transformers = pytest.importorskip("transformers")  # test-only reference
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**HF_TINY, attn_implementation="eager")
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases; random ones make the comparison meaningful
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def inputs(seed=1, B=3, T=16, padded=True):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 101, (B, T), generator=g)
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2:] = 1
    mask = torch.ones(B, T, dtype=torch.long)
    if padded:
        mask[1, 10:] = 0
        mask[2, 5:] = 0
    return idx, types, mask


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A reference model, and ours loaded from its save_pretrained folder (safetensors)."""
    ref = hf_model()
    folder = tmp_path_factory.mktemp("hf_pretraining")
    ref.save_pretrained(folder)
    assert os.path.exists(folder / "model.safetensors")
    return ref, BertForPreTraining.from_pretrained(str(folder)).eval()


def assert_same_outputs(ref, ours, padded, with_types):
    idx, types, mask = inputs(padded=padded)
    types = types if with_types else None
    mask = mask if padded else None
    with torch.no_grad():
        r = ref(input_ids=idx, token_type_ids=types, attention_mask=mask, output_hidden_states=True)
        mlm, nsp, _ = ours(idx, types, mask)
        hidden, pooled = ours.bert(idx, types, mask)
        rb = ref.bert(input_ids=idx, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(hidden, r.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, rb.pooler_output, atol=1e-5, rtol=0)
    torch.testing.assert_close(mlm, r.prediction_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(nsp, r.seq_relationship_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("with_types", [False, True])
def test_parity_with_transformers(pretrained, padded, with_types):
    assert_same_outputs(*pretrained, padded, with_types)


def test_parity_losses(pretrained):
    ref, ours = pretrained
    idx, types, mask = inputs()
    labels = torch.full_like(idx, -100)
    labels[:, 3] = idx[:, 3]
    labels[0, 7] = 5
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        r = ref(input_ids=idx, token_type_ids=types, attention_mask=mask, labels=labels, next_sentence_label=nsp)
        _, _, loss = ours(idx, types, mask, mlm_labels=labels, nsp_labels=nsp)
        _, _, sparse_loss = ours(idx, types, mask, mlm_labels=labels, nsp_labels=nsp, max_predictions=4)
    torch.testing.assert_close(loss, r.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse_loss, r.loss, atol=1e-5, rtol=0)


def test_from_pretrained_old_bin_checkpoint(tmp_path):
    """pytorch_model.bin as published for bert-base-uncased: gamma/beta LayerNorm names, the decoder
    weight stored beside the tied embedding, position_ids buffers."""
    ref = hf_model(seed=3)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
          for k, v in ref.state_dict().items()}
    sd["cls.predictions.decoder.weight"] = ref.bert.embeddings.word_embeddings.weight.detach().clone()
    sd["bert.embeddings.position_ids"] = torch.arange(32)[None]
    assert any(k.endswith("gamma") for k in sd)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    ref.config.to_json_file(tmp_path / "config.json")
    ours = BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    assert_same_outputs(ref, ours, padded=True, with_types=True)


def test_from_pretrained_encoder_only(tmp_path, capsys):
    ref = hf_model("BertModel", seed=4)
    ref.save_pretrained(tmp_path)
    ours = BertForPreTraining.from_pretrained(str(tmp_path)).eval()
    out = capsys.readouterr().out
    assert "mlm.dense.weight" in out and "nsp.weight" in out and "initialised fresh" in out
    idx, types, mask = inputs()
    with torch.no_grad():
        r = ref(input_ids=idx, token_type_ids=types, attention_mask=mask)
        hidden, pooled = ours.bert(idx, types, mask)
        h2, p2 = BertModel.from_pretrained(str(tmp_path)).eval()(idx, types, mask)
    for a, b in ((hidden, r.last_hidden_state), (pooled, r.pooler_output), (h2, hidden), (p2, pooled)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_classification_parity(tmp_path):
    ref = hf_model("BertForSequenceClassification", seed=5)
    ref.save_pretrained(tmp_path)
    ours = BertForSequenceClassification.from_pretrained(str(tmp_path), n_labels=2).eval()
    idx, types, mask = inputs()
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        r = ref(input_ids=idx, token_type_ids=types, attention_mask=mask, labels=labels)
        logits, loss = ours(idx, types, mask, labels=labels)
    torch.testing.assert_close(logits, r.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, r.loss, atol=1e-5, rtol=0)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        BertForPreTraining.from_pretrained(str(tmp_path))
    ref = hf_model()
    ref.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))
    with pytest.raises(ValueError, match="shape"):
        BertForPreTraining.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not BERT"):
        BertForPreTraining.from_pretrained(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no model.safetensors"):
        BertForPreTraining.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="no folder .*nonexistent here"):
        BertForPreTraining.from_pretrained(str(tmp_path / "nonexistent"))


def test_bad_inputs():
    model = BertForPreTraining(BertConfig(**TINY))
    with pytest.raises(ValueError, match="longer than max_positions"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.full((1, 4), 101))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 2))


def test_sparse_mlm_equals_dense_at_masked_positions():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY)).eval()
    idx, types, mask = inputs()
    labels = torch.full_like(idx, -100)
    masked = [(0, 2), (0, 9), (0, 15), (1, 0), (2, 4)]  # row 0 has 3 masks, row 1 one, row 2 one
    for b, t in masked:
        labels[b, t] = idx[b, t]
    with torch.no_grad():
        dense, _, dense_loss = model(idx, types, mask, mlm_labels=labels)
        sparse, _, sparse_loss = model(idx, types, mask, mlm_labels=labels, max_predictions=3)
    pos, y = gather_masked(labels, 3)
    assert pos[0].tolist() == [2, 9, 15] and pos[1, 0] == 0 and pos[2, 0] == 4
    assert y[1, 1:].tolist() == [-100, -100] and y[0].tolist() == [idx[0, 2], idx[0, 9], idx[0, 15]]
    assert sparse.shape == (3, 3, 101)
    for b, t in masked:
        j = pos[b].tolist().index(t)
        torch.testing.assert_close(sparse[b, j], dense[b, t])
    torch.testing.assert_close(sparse_loss, dense_loss)
    by_hand = torch.nn.functional.cross_entropy(torch.stack([dense[b, t] for b, t in masked]),
                                                torch.stack([idx[b, t] for b, t in masked]))
    torch.testing.assert_close(dense_loss, by_hand)  # -100 positions play no part


def test_gradients_reach_every_parameter_and_tie_holds():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**TINY))
    idx, types, mask = inputs()
    labels = torch.where(torch.rand(idx.shape) < 0.3, idx, -100)
    labels[:, 1] = idx[:, 1]
    _, _, loss = model(idx, types, mask, labels, torch.tensor([0, 1, 0]), max_predictions=12)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # tied: the decoder is the token embedding itself, so a word that never occurs in the input
    # still gets a gradient in wte (through the decoder), and no second copy exists to drift apart
    unseen = sorted(set(range(101)) - set(idx.flatten().tolist()))[0]
    assert model.bert.wte.weight.grad[unseen].abs().sum() > 0
    assert not any("decoder" in k for k in model.state_dict())
    assert sum(p.numel() for p in model.mlm.parameters()) == 32 * 32 + 32 + 2 * 32 + 101


def test_optimizer_groups_and_mfu():
    model = BertForPreTraining(BertConfig(**TINY))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.98), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert model.estimate_mfu(1e6, 16, "cpu") is None  # no made-up peak for a CPU
    c = model.config  # 6 * params in matmuls, plus attention, per token
    matmul = 2 * (4 * 32 * 32 + 2 * 32 * 48) + 32 * 32 + 32 * 101
    assert model.flops_per_token(16) == 6 * matmul + 3 * 4 * 2 * 16 * c.n_embd


def test_sentence_embedding():
    torch.manual_seed(0)
    model = BertModel(BertConfig(**TINY)).eval()
    idx, types, mask = inputs()
    hidden, pooled = model(idx, types, mask)
    torch.testing.assert_close(model.sentence_embedding(idx, types, mask), pooled)
    mean = model.sentence_embedding(idx, types, mask, pooling="mean")
    torch.testing.assert_close(mean[2], hidden[2, :5].mean(0))  # row 2 has 5 real tokens


def test_import_needs_only_torch():
    """model.py is copied into other projects: its top level imports torch and the standard library only."""
    import ast
    tree = ast.parse(open(os.path.join(ROOT, "model.py")).read())
    top = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
           for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert top - set(sys.stdlib_module_names) == {"torch"}
    code = ("import sys; import model; bad = {'transformers', 'tiktoken', 'datasets', 'huggingface_hub', "
            "'safetensors'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.slow
def test_compiled_step_does_not_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(**{**TINY, "dropout": 0.1}))
    opt = model.configure_optimizers(0.01, 1e-3, (0.9, 0.999), "cpu")
    step = torch.compile(model)
    losses = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(3):  # different masks, different numbers of masks per row, same shapes
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(0, 101, (4, 16), generator=g)
            labels = torch.where(torch.rand(4, 16, generator=g) < 0.2, idx, -100)
            mask = torch.ones(4, 16, dtype=torch.long)
            mask[seed % 4, 8:] = 0
            _, _, loss = step(idx, torch.zeros_like(idx), mask, labels, torch.tensor([0, 1, 1, 0]), max_predictions=8)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))


def test_weights_are_initialised_once(monkeypatch):
    calls = []
    original = model_lib._Base._init_weights
    monkeypatch.setattr(model_lib._Base, "_init_weights", lambda self, m: (calls.append(m), original(self, m)))
    for cls in (model_lib.BertModel, model_lib.BertForPreTraining, model_lib.BertForSequenceClassification):
        calls.clear()
        net = cls(BertConfig(**TINY))
        assert len(calls) == len(list(net.modules())), cls.__name__  # apply() visits every module once


def test_peak_flops_by_exact_device_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12),
                       ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA B200", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda: name)
        assert model_lib.peak_flops("cuda") == peak, name
    assert model_lib.peak_flops("cpu") is None


def test_mean_pooling_head():
    torch.manual_seed(0)
    net = model_lib.BertForSequenceClassification(BertConfig(**TINY), n_labels=3, pooling="mean").eval()
    idx = torch.randint(0, 90, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    logits, _ = net(idx, attention_mask=mask)
    hidden, _ = net.bert(idx, attention_mask=mask)
    want = net.classifier(torch.stack([hidden[0].mean(0), hidden[1, :4].mean(0)]))
    torch.testing.assert_close(logits, want)
    with pytest.raises(ValueError, match="pooling"):
        model_lib.BertForSequenceClassification(BertConfig(**TINY), pooling="max")
    with pytest.raises(ValueError, match="multiple of n_head"):
        BertConfig(n_embd=30, n_head=4)

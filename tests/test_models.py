"""The transformer backbone: causality, padding, attention backends, MoE, and the analytic counts of crossover.specs."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from crossover.models import MoE, SwiGLU, Transformer, build_model, flash_available, resolve_backend
from crossover.models.attention import reference_attention, sdpa_attention
from crossover.models.moe import load_balancing_loss
from crossover.specs import PRESETS, ModelConfig, count_params, padded_vocab, training_flops_per_token

TINY = ModelConfig(layers=2, d_model=64, heads=4, kv_heads=2, ffn=96, vocab_size=128, max_seq_len=64)
TINY_MOE = TINY.model_copy(update={"experts": 4, "top_k": 2})


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(causal: bool, cfg: ModelConfig = TINY, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return build_model(cfg, causal=causal).eval()


# ------------------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_analytic_param_count_equals_the_instantiated_model(preset):
    cfg = ModelConfig(preset=preset, vocab_size=padded_vocab(50278), **PRESETS[preset])
    model = build_model(cfg, causal=False, device="meta")  # nothing allocated, even for 8B
    counts = count_params(cfg)
    assert model.num_params() == counts.total
    assert model.num_params(active=True) == counts.active
    assert model.embed.weight.numel() + model.head.weight.numel() == counts.embedding
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize(
    "update", [{}, {"qk_norm": False}, {"kv_heads": 1}, {"experts": 8, "top_k": 2}, {"experts": 3, "qk_norm": False}]
)
def test_analytic_param_count_for_variants(update):
    cfg = TINY.model_copy(update=update)
    cfg = ModelConfig(**cfg.model_dump())  # re-validate
    model = build_model(cfg, causal=True)
    assert model.num_params() == count_params(cfg).total
    assert model.num_params(active=True) == count_params(cfg).active
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())


def test_presets_of_the_paper():
    cfg = ModelConfig(preset="1.7b", vocab_size=padded_vocab(50278), **PRESETS["1.7b"])
    model = build_model(cfg, causal=False, device="meta")
    assert len(model.blocks) == 28 and model.embed.weight.shape == (50304, 2048)
    assert model.blocks[0].attn.wq.weight.shape == (2048, 2048) and model.blocks[0].mlp.gate.weight.shape == (
        6144,
        2048,
    )
    assert model.head.weight is not model.embed.weight  # untied
    moe = ModelConfig(preset="8b-a1b", vocab_size=padded_vocab(50278), **PRESETS["8b-a1b"])
    counts = count_params(moe)
    assert 7e9 < counts.total < 9e9 and 0.8e9 < counts.active < 1.3e9


# ------------------------------------------------------------------------------------------------ FLOPs


def measured_training_flops(model: Transformer, tokens: torch.Tensor) -> int:
    """Forward + backward through the real modules. SDPA's math kernel so the counter sees the attention matmuls
    (the fused CPU kernel has no FLOP formula registered in torch.utils.flop_counter)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(tokens)
        (out.logits.float().logsumexp(-1).mean() + out.aux_loss).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(preset="nano", vocab_size=4096, **PRESETS["nano"]),
        ModelConfig(preset="micro", vocab_size=4096, **PRESETS["micro"]),
        ModelConfig(preset="nano", vocab_size=4096, **{**PRESETS["nano"], "experts": 8, "top_k": 2}),
    ],
    ids=["nano", "micro", "nano-moe8x2"],
)
@pytest.mark.parametrize("causal", [True, False], ids=["ar", "mdlm"])
def test_analytic_flops_match_the_flop_counter(cfg, causal):
    B, T = 2, 128
    torch.manual_seed(0)
    model = build_model(cfg, causal=causal).train()
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    measured = measured_training_flops(model, tokens)
    analytic = training_flops_per_token(cfg, T) * B * T
    assert measured == pytest.approx(analytic, rel=0.05)


# ------------------------------------------------------------------------------------------------ attention


def test_ar_model_is_causal_and_mdlm_model_is_bidirectional():
    T, j = 16, 9
    tokens = torch.randint(0, TINY.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, j] = (changed[:, j] + 1) % TINY.vocab_size
    for causal in (True, False):
        model = tiny(causal)
        with torch.no_grad():
            diff = (model(tokens).logits - model(changed).logits).abs().amax(dim=(0, 2))  # [T]
        assert diff[j:].min() > 1e-4  # position j and (through attention) everything after it change
        if causal:
            assert diff[:j].max() == 0  # nothing before j can see token j
        else:
            assert diff[:j].min() > 1e-4  # every position sees token j


@pytest.mark.parametrize("causal", [True, False])
def test_padding_never_leaks(causal):
    """A padded mixed-length batch gives each row the logits it gets alone, whatever the pad ids are."""
    model = tiny(causal)
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([12, 5, 20])
    rows = [torch.randint(0, TINY.vocab_size, (int(n),), generator=g) for n in lengths]
    T = int(lengths.max())
    attention_mask = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        outs = []
        for pad in (0, 77):
            batch = torch.full((3, T), pad)
            for i, row in enumerate(rows):
                batch[i, : len(row)] = row
            outs.append(model(batch, attention_mask=attention_mask).logits)
        for i, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            for out in outs:
                torch.testing.assert_close(out[i, : len(row)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_sdpa_matches_reference_attention(causal, kv_heads):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 24, 4, 16, generator=g)
    k, v = torch.randn(2, 2, 24, kv_heads, 16, generator=g)
    lengths = torch.tensor([24, 11])
    from crossover.models.attention import attention_mask_matrix

    mask = attention_mask_matrix(torch.arange(24)[None] < lengths[:, None], causal)
    for m in (None, mask):
        torch.testing.assert_close(
            sdpa_attention(q, k, v, causal, m, 0.0), reference_attention(q, k, v, causal, m, 0.0), atol=1e-5, rtol=1e-5
        )
    model = tiny(causal)
    tokens = torch.randint(0, TINY.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        sdpa = model(tokens).logits
        model.set_attention_backend("reference")
        ref = model(tokens).logits
    torch.testing.assert_close(sdpa, ref, atol=1e-5, rtol=1e-5)


def test_backend_resolution_on_this_machine():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, torch.float32, masked=False) == "sdpa"
    assert resolve_backend("sdpa", cpu, torch.bfloat16, masked=True) == "sdpa"
    with pytest.raises(RuntimeError, match="flash was requested but cannot run"):
        resolve_backend("flash", cpu, torch.bfloat16, masked=False)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", cpu, torch.float32, masked=False)


@pytest.mark.skipif(not flash_available(), reason="flash-attn needs a CUDA device and the flash-attn package")
@pytest.mark.parametrize("causal", [True, False])
def test_flash_matches_sdpa_on_gpu(causal):
    cfg = TINY.model_copy(update={"attention": "flash"})
    torch.manual_seed(0)
    model = build_model(cfg, causal=causal, device="cuda").to(torch.bfloat16).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        flash = model(tokens).logits.float()
        model.set_attention_backend("sdpa")
        sdpa = model(tokens).logits.float()
    torch.testing.assert_close(flash, sdpa, atol=3e-2, rtol=3e-2)


def test_sequence_longer_than_max_seq_len_is_refused():
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        tiny(True)(torch.zeros(1, 65, dtype=torch.long))


# ------------------------------------------------------------------------------------------------ dropout, init, compile


def test_dropout_is_parameter_noise_in_training_only():
    model = tiny(False, TINY.model_copy(update={"dropout": 0.2}))
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    with torch.no_grad():
        model.train()
        a, b = model(tokens).logits, model(tokens).logits
        model.eval()
        c, d = model(tokens).logits, model(tokens).logits
    assert not torch.equal(a, b) and torch.equal(c, d)
    plain = tiny(False)
    plain.train()
    with torch.no_grad():
        assert torch.equal(plain(tokens).logits, plain.eval()(tokens).logits)  # dropout 0: train == eval


def test_meta_model_materialises_with_init_weights():
    fresh = tiny(True)
    model = build_model(TINY, causal=True, device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    torch.testing.assert_close(model.rope, fresh.rope)
    out = model(torch.randint(0, TINY.vocab_size, (1, 8))).logits
    assert torch.isfinite(out).all()
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_compiled_model_matches_eager():
    cfg = TINY.model_copy(update={"layers": 1})
    torch.manual_seed(0)
    compiled = build_model(cfg, causal=True)
    compiled.compile_blocks()  # inductor on CPU: needs the C++ compiler every supported machine has
    eager = Transformer(cfg, causal=True)
    eager.load_state_dict(compiled.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (2, 16))
    torch.testing.assert_close(compiled(tokens).logits, eager(tokens).logits, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ loss head, checkpointing


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_the_model_loss_equals_the_objective_on_logits_without_whole_batch_logits(objective):
    from crossover.models import objectives

    cfg = TINY.model_copy(update={"vocab_size": 512})
    B, T = 8, 63  # T + 1 = max_seq_len
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size - 1, (B, T + 1), generator=g)
    if objective == "ar":
        inputs, targets = objectives.ar_inputs_targets(tokens)
        weights = objectives.ar_weights(targets)
        reference = lambda logits: objectives.ar_loss(logits, targets)  # noqa: E731
    else:
        targets = tokens[:, :T]
        t = objectives.sample_t(B, generator=g)
        inputs, masked = objectives.mask_tokens(targets, t, cfg.vocab_size - 1, g)
        weights = objectives.mdlm_weights(masked, t)
        reference = lambda logits: objectives.mdlm_loss(logits, targets, masked, t)  # noqa: E731
    model = tiny(objective == "ar", cfg).train()
    expected = reference(model(inputs).logits)
    expected.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    old_chunk = objectives.CHUNK_LOGITS
    objectives.CHUNK_LOGITS = 40 * cfg.vocab_size  # 40 rows a chunk: several chunks, the last one short
    try:
        with LargestTensor() as watch:
            out = model(inputs, targets=targets, loss_weights=weights)
            out.loss.backward()
    finally:
        objectives.CHUNK_LOGITS = old_chunk
    assert out.logits is None
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    for p, expected_grad in zip(model.parameters(), expected_grads, strict=True):
        torch.testing.assert_close(p.grad, expected_grad, atol=1e-5, rtol=1e-4)
    # Never the batch's logits nor their gradient: the largest tensors are activations, weights or one chunk.
    assert watch.largest == max(B * T * cfg.ffn, cfg.vocab_size * cfg.d_model, 40 * cfg.vocab_size)
    assert watch.largest < B * T * cfg.vocab_size / 4


def test_activation_checkpointing_changes_no_loss_or_gradient():
    """What it saves in memory is measured in tests/test_memory.py."""
    from crossover.models.objectives import ar_inputs_targets, ar_weights

    cfg = TINY.model_copy(update={"layers": 3})
    inputs, targets = ar_inputs_targets(torch.randint(0, cfg.vocab_size, (4, 33)))
    weights = ar_weights(targets)
    results = {}
    for mode in ("none", "selective", "full"):
        model = tiny(True, cfg).train()
        model.set_activation_checkpointing(mode)
        loss = model(inputs, targets=targets, loss_weights=weights).loss
        loss.backward()
        results[mode] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    for mode in ("selective", "full"):
        torch.testing.assert_close(results[mode][0], results["none"][0], atol=0, rtol=0)
        for a, b in zip(results[mode][1], results["none"][1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown activation checkpointing 'some'"):
        tiny(True).set_activation_checkpointing("some")


# ------------------------------------------------------------------------------------------------ MoE


def test_moe_with_one_expert_and_top1_equals_the_dense_mlp():
    cfg = TINY.model_copy(update={"experts": 1, "top_k": 1})
    torch.manual_seed(0)
    dense, moe = SwiGLU(cfg.d_model, cfg.ffn), MoE(cfg)
    moe.experts[0].load_state_dict(dense.state_dict())
    x = torch.randn(3, 10, cfg.d_model)
    y, stats = moe(x)
    torch.testing.assert_close(y, dense(x), atol=0, rtol=0)
    assert stats.load.tolist() == [1.0] and stats.balance_loss.item() == pytest.approx(1.0)


def test_moe_is_dropless_and_matches_a_per_token_loop():
    torch.manual_seed(0)
    moe = MoE(TINY_MOE)
    with torch.no_grad():
        moe.router.weight[0] += 2.0  # skew routing towards expert 0: every assignment is still computed
    x = torch.randn(2, 20, TINY.d_model)
    y, stats = moe(x)
    expected = torch.zeros_like(x).view(-1, TINY.d_model)
    for n, xn in enumerate(x.view(-1, TINY.d_model)):
        probs = moe.router(xn).softmax(-1)
        for p, e in zip(*probs.topk(TINY_MOE.top_k), strict=True):
            expected[n] += p * moe.experts[int(e)](xn)
    torch.testing.assert_close(y.view(-1, TINY.d_model), expected, atol=1e-5, rtol=1e-5)
    assert stats.load.sum().item() == pytest.approx(1.0) and stats.load[0] > 0.25


def test_load_balancing_loss_is_minimal_at_uniform_routing():
    E, N = 4, 64
    uniform = torch.full((N, E), 1 / E)
    anywhere = torch.randint(0, E, (N, 1))
    assert load_balancing_loss(uniform, anywhere, E)[0].item() == pytest.approx(1.0)
    # Routing that follows the probabilities (confident router): E * sum_i f_i P_i, 1 only when balanced, E at collapse.
    balanced = torch.arange(N)[:, None] % E
    one_hot = torch.nn.functional.one_hot(balanced[:, 0], E).float()
    assert load_balancing_loss(one_hot, balanced, E)[0].item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    for skew in (0.5, 1.0, 2.0, 4.0):
        logits = torch.randn(N, E, generator=g) + skew * torch.arange(E)  # skewed towards the last experts
        probs = logits.softmax(-1)
        loss = load_balancing_loss(probs, probs.topk(1).indices, E)[0].item()
        assert loss > 1.0
    collapsed = torch.zeros(N, E).index_fill_(1, torch.tensor([0]), 1.0)
    assert load_balancing_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), E)[0].item() == pytest.approx(E)


def test_balancing_loss_gradient_evens_out_the_load():
    torch.manual_seed(0)
    moe = MoE(TINY_MOE.model_copy(update={"moe_aux_coef": 1.0, "moe_z_coef": 0.0}))
    with torch.no_grad():
        moe.router.weight[0] += 0.03  # inputs have a positive mean: expert 0 gets about half of the assignments
    x = torch.randn(256, TINY.d_model) + 1
    optimizer = torch.optim.SGD(moe.router.parameters(), lr=0.1)
    before = moe(x)[1]
    for _ in range(30):
        optimizer.zero_grad()
        moe(x)[1].aux_loss.backward()
        optimizer.step()
    after = moe(x)[1]
    assert before.load.max() > 0.45 and after.load.max() < before.load.max() - 0.1
    assert after.balance_loss < before.balance_loss - 0.2


def test_router_receives_gradients_from_the_lm_loss_and_the_aux_loss():
    model = tiny(True, TINY_MOE).train()
    tokens = torch.randint(0, TINY.vocab_size, (2, 16))
    out = model(tokens)
    assert out.expert_load.shape == (TINY.layers, 4) and torch.allclose(out.expert_load.sum(-1), torch.ones(2))
    assert out.aux_loss.requires_grad and out.balance_loss.item() >= 1.0 - 1e-6 and out.z_loss.item() >= 0
    for loss in (out.logits.float().logsumexp(-1).mean(), out.aux_loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        for block in model.blocks:
            assert block.mlp.router.weight.grad is not None and block.mlp.router.weight.grad.abs().sum() > 0
    # aux_loss is the coefficient-weighted sum over layers
    cfg = TINY_MOE
    assert out.aux_loss.item() == pytest.approx(
        cfg.layers * (cfg.moe_aux_coef * out.balance_loss.item() + cfg.moe_z_coef * out.z_loss.item()), rel=1e-5
    )
    assert tiny(True).eval()(tokens).expert_load is None


def test_unused_experts_still_get_a_gradient():
    torch.manual_seed(0)
    moe = MoE(TINY_MOE)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] += 10.0  # x . w_0 dominates: experts 2, 3 mostly unused
    x = torch.randn(4, TINY.d_model).abs()
    y, stats = moe(x)
    y.sum().backward()
    assert all(p.grad is not None for p in moe.parameters())


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("causal", [True, False])
def test_both_models_fit_a_repeated_batch(causal):
    """A few AdamW steps through objective + aux loss lower the objective on fixed noise draws (MoE backbone)."""
    from crossover.models.objectives import ar_inputs_targets, ar_loss, mask_tokens, mdlm_loss, sample_t

    model = tiny(causal, TINY_MOE).train()
    tokens = torch.randint(0, TINY.vocab_size - 1, (4, 33), generator=torch.Generator().manual_seed(0))
    mask_id = TINY.vocab_size - 1

    def step_loss(g: torch.Generator):
        if causal:
            inputs, targets = ar_inputs_targets(tokens)
            out = model(inputs)
            return ar_loss(out.logits, targets), out.aux_loss
        t = sample_t(4, 1e-3, g, stratified=True)
        noisy, masked = mask_tokens(tokens, t, mask_id, g)
        out = model(noisy)
        return mdlm_loss(out.logits, tokens, masked, t), out.aux_loss

    def held_loss() -> float:
        with torch.no_grad():
            return sum(step_loss(torch.Generator().manual_seed(100 + i))[0].item() for i in range(8)) / 8

    before = held_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        optimizer.zero_grad()
        loss, aux = step_loss(g)
        (loss + aux).backward()
        optimizer.step()
    assert held_loss() < 0.75 * before  # MDLM cannot go far: a fully masked row carries no information

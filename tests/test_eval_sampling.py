"""The samplers: AR greedy/temperature/top-p decoding and LLaDA-style MDLM unmasking, on real models."""

import pytest
import torch

from crossover.evals.checkpoint import load_checkpoint
from crossover.evals.sampling import ar_generate, generate, mdlm_generate
from crossover.models import build_model
from crossover.specs.model import ModelConfig

CFG = ModelConfig(layers=2, d_model=64, heads=4, kv_heads=2, ffn=96, vocab_size=64, max_seq_len=32)
MASK = 63
PROMPTS = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2], [11]]  # different lengths: the batch is padded


def random_model(causal: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # float64: padded and unpadded forwards agree to ~1e-15, so argmax ties cannot make the comparison flaky
    return build_model(CFG, causal=causal).double().eval()


def favour(model: torch.nn.Module, ids: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Make the real model's head put a huge logit on `ids` at every position."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., ids] += 1e4
        return output

    return model.head.register_forward_hook(hook)


def stepwise_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """The reference: one unpadded sequence, argmax of the last position, appended, n times."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_ar_greedy_equals_stepwise_argmax(one_thread):
    model = random_model(causal=True)
    out = ar_generate(model, PROMPTS, 10)
    assert out == [stepwise_greedy(model, p, 10) for p in PROMPTS]
    # a prompt too long for the window keeps its last max_seq_len - max_new_tokens tokens
    long = list(range(1, 41))
    assert ar_generate(model, [long], 10) == [stepwise_greedy(model, long[-22:], 10)]
    # generation stops at (and drops) the first stop id, per row
    stop = out[1][3]
    cut = ar_generate(model, PROMPTS, 10, stop_ids=[stop])
    assert cut == [row[: row.index(stop)] if stop in row else row for row in out]
    assert cut[1] == out[1][: out[1].index(stop)] and len(cut[1]) <= 3


def test_ar_temperature_sampling_is_seeded_and_tiny_top_p_is_greedy(one_thread):
    model = random_model(causal=True)

    def sample(seed: int, **kw) -> list[list[int]]:
        return ar_generate(model, PROMPTS, 12, temperature=1.0, generator=torch.Generator().manual_seed(seed), **kw)

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # 36 draws from a near-uniform 64-way distribution
    assert sample(3) != ar_generate(model, PROMPTS, 12)  # sampling is not greedy
    assert sample(3, top_p=1e-6) == ar_generate(model, PROMPTS, 12)
    with pytest.raises(ValueError, match="top_p"):
        sample(1, top_p=0.0)


def test_ar_top_p_keeps_only_the_nucleus(one_thread):
    model = random_model(causal=True)
    favour(model, [17, 23])  # two tokens share almost all the mass; top_p=0.5 keeps only the likelier one
    with torch.no_grad():
        logits = model(torch.tensor([PROMPTS[1]])).logits[0, -1]
    best = int(logits.argmax())
    assert best in (17, 23)

    def first_tokens(**kw) -> set[int]:
        gens = [torch.Generator().manual_seed(s) for s in range(30)]
        return {ar_generate(model, [PROMPTS[1]], 1, temperature=1.0, generator=g, **kw)[0][0] for g in gens}

    assert first_tokens(top_p=0.5) == {best}
    assert first_tokens() == {17, 23}


@pytest.mark.parametrize(
    ("remasking", "block_length", "temperature"),
    [("low_confidence", None, 0.0), ("random", None, 0.0), ("low_confidence", 8, 0.0), ("random", 8, 1.0)],
)
def test_mdlm_fills_the_whole_canvas_without_masks(tiny_checkpoints, one_thread, remasking, block_length, temperature):
    em = load_checkpoint(tiny_checkpoints["mdlm"])
    prompts = [em.encode("def add(a, b):\n"), em.encode("import os\nimport sys\n\n\nclass Config:\n    ")]
    out = mdlm_generate(
        em.model,
        prompts,
        24,
        mask_id=em.mask_id,
        steps=12,
        remasking=remasking,
        block_length=block_length,
        temperature=temperature,
        generator=torch.Generator().manual_seed(0),
    )
    assert [len(row) for row in out] == [24, 24]
    assert all(em.mask_id not in row for row in out)
    assert all(isinstance(em.decode(row), str) for row in out)
    if temperature == 0 and remasking == "low_confidence":  # deterministic: the same call gives the same tokens
        again = mdlm_generate(em.model, prompts, 24, mask_id=em.mask_id, steps=12, block_length=block_length)
        assert again == out


def test_mdlm_unmasks_blocks_left_to_right_on_schedule(one_thread):
    model = random_model(causal=False)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    prompt = [5, 9, 2, 7]
    out = mdlm_generate(model, [prompt], 24, mask_id=MASK, steps=6, block_length=8)
    assert len(seen) == 6  # two steps per block
    for step, x in enumerate(seen):
        assert x[0, :4].tolist() == prompt  # the prompt is context, never rewritten
        masked = (x[0, 4:] == MASK).view(3, 8).sum(-1).tolist()  # masks left in each block before this step
        block, second = divmod(step, 2)
        expected = [0] * block + [4 if second else 8] + [8] * (2 - block)
        assert masked == expected
    assert len(out[0]) == 24 and MASK not in out[0]
    # uneven splits: 10 tokens in blocks of 4 (4, 4, 2) over 5 steps (2, 2, 1)
    seen.clear()
    assert len(mdlm_generate(model, [prompt], 10, mask_id=MASK, steps=5, block_length=4)[0]) == 10
    assert [int((x == MASK).sum()) for x in seen] == [10, 8, 6, 4, 2]


def test_mdlm_batched_prompts_match_single_prompts(one_thread):
    model = random_model(causal=False)
    batched = mdlm_generate(model, PROMPTS, 8, mask_id=MASK, steps=4)
    assert batched == [mdlm_generate(model, [p], 8, mask_id=MASK, steps=4)[0] for p in PROMPTS]


def test_a_model_that_favours_the_mask_never_outputs_it(one_thread):
    model = random_model(causal=False)
    favour(model, [MASK])
    with torch.no_grad():
        assert (model(torch.tensor([[MASK] * 8])).logits.argmax(-1) == MASK).all()
    for remasking in ("low_confidence", "random"):
        out = mdlm_generate(model, PROMPTS, 12, mask_id=MASK, steps=12, remasking=remasking, temperature=1.0)
        assert [len(row) for row in out] == [12] * 3 and all(MASK not in row for row in out)


def test_generate_never_emits_special_or_padding_ids(tiny_checkpoints, one_thread):
    from crossover.data.tokenizer import real_size

    for objective in ("ar", "mdlm"):
        em = load_checkpoint(tiny_checkpoints[objective])
        vocab = em.model.cfg.vocab_size
        banned = sorted({em.mask_id, em.pad_id} - {em.eod_id} | set(range(real_size(em.tokenizer), vocab)))
        assert banned and em.mask_id in banned
        favour(em.model, banned)
        out = generate(em, [em.encode("def f(x):\n")], 16, temperature=1.0, generator=torch.Generator().manual_seed(0))
        assert len(out) == 1 and 0 < len(out[0]) <= 16
        assert not set(out[0]) & set(banned)
        assert isinstance(em.decode(out[0]), str)


def test_generate_dispatches_and_cuts_at_stop_ids(tiny_checkpoints, one_thread):
    for objective in ("ar", "mdlm"):
        em = load_checkpoint(tiny_checkpoints[objective])
        prompt = [em.eod_id, *em.encode("def add(a, b):\n    return")]
        full = generate(em, [prompt], 16)
        assert len(full[0]) == 16
        stop = full[0][5]
        cut = generate(em, [prompt], 16, stop_ids=(stop,))
        assert cut[0] == full[0][: full[0].index(stop)]
        assert isinstance(em.decode(cut[0]), str)

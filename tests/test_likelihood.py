"""Likelihoods for evaluation: AR exact, MDLM Monte Carlo ELBO over padded batches of (context, continuation)."""

import pytest
import torch
from torch import nn

from crossover.evals.likelihood import ar_loglik, mdlm_loglik, mdlm_ordered_loglik
from crossover.models import build_model
from crossover.specs import ModelConfig

CFG = ModelConfig(layers=2, d_model=64, heads=4, kv_heads=4, ffn=96, vocab_size=64, max_seq_len=64)
MASK = 63


pytestmark = pytest.mark.usefixtures("one_thread")


class Unigram(nn.Module):
    """A "model" that outputs the same distribution p at every position, whatever its input."""

    def __init__(self, p: torch.Tensor):
        super().__init__()
        self.register_buffer("logp", p.log())
        self.seen: list[torch.Tensor] = []

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append(tokens.clone())
        return self.logp.expand(*tokens.shape, -1)


def pack(pairs: list[tuple[list[int], list[int]]], pad: int = 0):
    """(context, continuation) pairs -> right-padded tokens, continuation_mask, lengths."""
    lengths = torch.tensor([len(c) + len(x) for c, x in pairs])
    tokens = torch.full((len(pairs), int(lengths.max())), pad)
    cont = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, (c, x) in enumerate(pairs):
        tokens[i, : len(c) + len(x)] = torch.tensor(c + x)
        cont[i, len(c) : len(c) + len(x)] = True
    return tokens, cont, lengths


def random_pairs(seed: int, n: int = 4, vocab: int = MASK):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        c, x = torch.randint(1, 12, (2,), generator=g).tolist()
        pairs.append(
            (torch.randint(0, vocab, (c,), generator=g).tolist(), torch.randint(0, vocab, (x,), generator=g).tolist())
        )
    return pairs


def test_ar_loglik_is_exact_on_a_padded_mixed_length_batch():
    torch.manual_seed(0)
    model = build_model(CFG, causal=True).train()
    pairs = random_pairs(0)
    tokens, cont, lengths = pack(pairs)
    got = ar_loglik(model, tokens, cont, lengths)
    assert model.training  # restored
    for i, (c, x) in enumerate(pairs):
        seq = torch.tensor([c + x])
        with torch.no_grad():
            logp = model.eval()(seq).logits[0].log_softmax(-1)
        expected = sum(logp[len(c) + j - 1, x[j]].item() for j in range(len(x)))
        assert got[i].item() == pytest.approx(expected, abs=1e-4)
    assert torch.equal(got, ar_loglik(model, pack(pairs, pad=55)[0], cont, lengths))  # pad ids never matter


def test_ar_loglik_needs_a_context():
    tokens, cont, lengths = pack([([], [1, 2, 3])])
    with pytest.raises(ValueError, match="start with a context"):
        ar_loglik(Unigram(torch.full((64,), 1 / 64)), tokens, cont, lengths)


def test_mdlm_loglik_masks_only_continuation_tokens():
    p = torch.full((64,), 1 / 64)
    model = Unigram(p)
    pairs = random_pairs(1)
    tokens, cont, lengths = pack(pairs, pad=5)
    mdlm_loglik(
        model,
        tokens,
        cont,
        lengths,
        mask_id=MASK,
        k=16,
        generator=torch.Generator().manual_seed(0),
        max_tokens=24 * tokens.shape[1],
    )
    seen = torch.cat(model.seen)  # [B*K, T], in chunks of at most 24 rows
    assert seen.shape == (4 * 16, tokens.shape[1]) and [s.shape[0] for s in model.seen] == [24, 24, 16]
    masked = (seen == MASK).view(4, 16, -1)
    assert not (masked & ~cont[:, None, :]).any()  # context and padding are never masked
    counts = masked.sum(-1)  # each sample masks between 1 and L continuation tokens
    L = cont.sum(-1, keepdim=True)
    assert (counts >= 1).all() and (counts <= L).all()
    assert (counts.float().mean(-1) > 0.3 * L[:, 0]).all()  # stratified t spreads over (0, 1]


def test_mdlm_loglik_converges_to_the_exact_nll():
    """Tokens i.i.d. from p, a model that outputs p: the ELBO is the exact log-likelihood, error shrinking with K."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, generator=g) * 2, 0)
    pairs = []
    for _ in range(16):
        c, x = torch.randint(1, 20, (2,), generator=g).tolist()
        draw = torch.multinomial(p, c + x, replacement=True, generator=g).tolist()
        pairs.append((draw[:c], draw[c:]))
    tokens, cont, lengths = pack(pairs)
    exact = (p.log()[tokens] * cont).sum(-1)
    errors, biases = {}, {}
    for k in (1, 8, 64, 512):
        runs = torch.stack(
            [
                mdlm_loglik(
                    Unigram(p),
                    tokens,
                    cont,
                    lengths,
                    mask_id=MASK,
                    k=k,
                    generator=torch.Generator().manual_seed(s),
                    max_tokens=10**6,
                )
                for s in range(4)
            ]
        )
        per_token = (runs - exact) / cont.sum(-1)  # nats per continuation token
        errors[k], biases[k] = per_token.abs().mean().item(), per_token.mean().item()
    print("mean |error| per token by K:", errors, "bias:", biases)
    assert errors[1] > errors[8] > errors[64] > errors[512], errors  # about 1/sqrt(K)
    assert errors[512] < errors[8] / 4 and errors[512] < 0.1 * errors[1] and errors[512] < 0.05, errors
    assert abs(biases[512]) < 0.01, biases  # unbiased: the error is Monte Carlo noise only


def test_mdlm_loglik_with_the_real_model_on_padded_batches():
    torch.manual_seed(0)
    model = build_model(CFG, causal=False)
    pairs = random_pairs(2)
    tokens, cont, lengths = pack(pairs)
    kwargs = dict(mask_id=MASK, k=8, max_tokens=16 * 20)
    a = mdlm_loglik(model, tokens, cont, lengths, generator=torch.Generator().manual_seed(0), **kwargs)
    b = mdlm_loglik(model, pack(pairs, pad=44)[0], cont, lengths, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(a, b)  # pad ids never reach a real position through bidirectional attention
    assert (a < 0).all() and torch.isfinite(a).all()
    # An untrained model is close to uniform: about -L log V per example.
    L = cont.sum(-1).float()
    assert ((-a / L) - torch.log(torch.tensor(64.0))).abs().max() < 0.5
    # Rows without continuation tokens score 0.
    empty = cont.clone()
    empty[0] = False
    assert mdlm_loglik(model, tokens, empty, lengths, **kwargs)[0].item() == 0.0


def _decoded_left_to_right(model, context: list[int], answer: list[int], blocks: list[list[int]]) -> float:
    """log p(answer | context) when MDLM unmasks `blocks` (lists of answer positions) one after another."""
    seq = torch.tensor([context + answer])
    total, revealed = 0.0, set()
    with torch.no_grad():
        for block in blocks:
            noisy = seq.clone()
            for j in range(len(answer)):
                if j not in revealed:
                    noisy[0, len(context) + j] = MASK
            logp = model.eval()(noisy).logits[0].log_softmax(-1)
            total += sum(logp[len(context) + j, answer[j]].item() for j in block)
            revealed |= set(block)
    return total


@pytest.mark.parametrize("block", [1, 3, 100])
def test_mdlm_ordered_loglik_is_the_likelihood_of_decoding_in_reading_order(block):
    """Each example's answer decoded left to right `block` tokens per step (1: the chain rule, one token per step),
    computed by hand one forward at a time; padding and a batch of mixed lengths (answers shorter than a block
    included) change nothing, and two calls give the same numbers (no Monte Carlo draw)."""
    torch.manual_seed(0)
    model = build_model(CFG, causal=False).train()
    pairs = random_pairs(2, n=5)
    tokens, cont, lengths = pack(pairs, pad=7)
    got = mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK, block=block, max_tokens=40)
    assert model.training
    for i, (c, x) in enumerate(pairs):
        blocks = [list(range(start, min(start + block, len(x)))) for start in range(0, len(x), block)]
        assert got[i].item() == pytest.approx(_decoded_left_to_right(model, c, x, blocks), abs=1e-4), (i, block)
    again = mdlm_ordered_loglik(model, pack(pairs, pad=3)[0], cont, lengths, mask_id=MASK, block=block)
    assert torch.allclose(got, again, atol=1e-5)
    assert mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK).equal(
        mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK, block=1)
    )  # the default: one token per step
    with pytest.raises(ValueError, match="block must be >= 1"):
        mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK, block=0)


def test_per_token_decoding_is_the_chain_rule():
    """Block 1 is the chain rule in reading order: log p(x_1 | c) + log p(x_2 | c, x_1) + ..., each factor from its
    own forward with the later answer tokens masked, summed by hand."""
    torch.manual_seed(1)
    model = build_model(CFG, causal=False).eval()
    context, answer = [5, 9, 11, 2], [20, 21, 22, 23, 24, 25]
    expected = 0.0
    for j, token in enumerate(answer):
        seq = torch.tensor([context + answer[:j] + [MASK] * (len(answer) - j)])
        with torch.no_grad():
            expected += model(seq).logits[0, len(context) + j].log_softmax(-1)[token].item()
    tokens, cont, lengths = pack([(context, answer)])
    got = mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK)
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_every_answer_is_decoded_in_blocks_of_the_same_size():
    """With block 4, a 16-token answer takes 4 steps and a 6-token one 2 (4 tokens, then 2), in one batch: the block
    is a number of tokens, never a number of steps per answer, so answers of different lengths are scored alike."""
    model = Unigram(torch.full((64,), 1 / 64))
    tokens, cont, lengths = pack([([1, 2], list(range(10, 26))), ([1, 2, 3], list(range(30, 36)))], pad=0)
    mdlm_ordered_loglik(model, tokens, cont, lengths, mask_id=MASK, block=4)
    rows = torch.cat(model.seen)
    revealed = {}  # example -> answer tokens visible at each of its steps
    for row in rows:
        example = 0 if row[2] == 10 or row[2] == MASK else 1  # noqa: PLR2004 (example 0's answer starts at 2)
        answer = row[2:18] if example == 0 else row[3:9]
        revealed.setdefault(example, []).append(int((answer != MASK).sum()))
    assert revealed == {0: [0, 4, 8, 12], 1: [0, 4]}

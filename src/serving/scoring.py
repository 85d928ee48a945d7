"""Log-probabilities for the completions API's ``logprobs``: each token's under the model, before temperature and the
top-k/top-p filters (which change only what is drawn), with its most likely alternatives; and with ``echo``, the
prompt's own tokens scored in one forward pass (what lm-evaluation-harness's loglikelihood asks for)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.nn import functional as F

from src.data.tokenizer import Tokenizer
from src.model import LanguageModel

Alternatives = list[tuple[int, float]]  # (token, log-probability), the most likely first


class Score(NamedTuple):
    """One token's log-probability under the model and its most likely alternatives (both None for the prompt's
    first token, which nothing predicts); ``text`` is the text the token completes ('' for the first bytes of a
    multi-byte character)."""

    token: int
    logprob: float | None
    top: Alternatives | None
    text: str


def score_rows(logprobs: torch.Tensor, tokens: list[int], alternatives: list[int]) -> list[tuple[float, Alternatives]]:
    """(log-probability of ``tokens[i]``, the ``alternatives[i]`` most likely tokens with theirs, and the token itself
    when it is not among them, as vLLM does) for each row i of ``logprobs`` (N, V)."""
    index = torch.tensor(tokens, dtype=torch.long, device=logprobs.device).view(-1, 1)  # (N, 1)
    chosen = logprobs.gather(1, index)[:, 0].tolist()
    values, ids = logprobs.topk(max(alternatives, default=0), dim=-1)  # (N, the most asked for), the best first
    out = []
    for token, logprob, k, top_values, top_ids in zip(tokens, chosen, alternatives, values.tolist(), ids.tolist()):
        top = list(zip(top_ids[:k], top_values[:k]))
        if token not in top_ids[:k]:
            top.append((token, logprob))
        out.append((logprob, top))
    return out


def score_tokens(asked: list[int | None], tokens: list[int], logits: torch.Tensor) -> list:
    """The scores of ``tokens`` under their rows of ``logits`` (N, V) for the rows whose ``asked`` (alternatives
    wanted) is not None, from one log-softmax over those rows; None for the others."""
    rows = [i for i, k in enumerate(asked) if k is not None]
    out: list[tuple[float, Alternatives] | None] = [None] * len(asked)
    if rows:
        logprobs = F.log_softmax(logits[rows].float(), dim=-1)  # (R, V)
        for i, scored in zip(rows, score_rows(logprobs, [tokens[i] for i in rows], [asked[i] for i in rows])):
            out[i] = scored
    return out


def score_prompts(
    model: LanguageModel, tokenizer: Tokenizer, prompts: list[Sequence[int]], alternatives: list[int]
) -> list[list[Score]]:
    """The scores of each prompt's tokens (the first has none: nothing predicts it) with ``alternatives[i]`` most
    likely tokens each, from one forward pass over all the prompts (padded on the right, which causal attention
    never lets an earlier position see)."""
    device = next(model.parameters()).device
    batch = torch.zeros(len(prompts), max(map(len, prompts)), dtype=torch.long, device=device)
    for row, ids in enumerate(prompts):
        batch[row, : len(ids)] = torch.tensor(ids, device=device)
    logits, _ = model(batch)  # (B, T, V)
    logprobs = F.log_softmax(logits.float(), dim=-1)
    out = []
    for row, (ids, k) in enumerate(zip(prompts, alternatives)):
        ids, decode = list(ids), tokenizer.stream_decoder()
        texts = [decode([token]) for token in ids]
        texts[-1] += decode([], final=True)
        scored = score_rows(logprobs[row, : len(ids) - 1], ids[1:], [k] * (len(ids) - 1))
        first = Score(ids[0], None, None, texts[0])
        out.append([first] + [Score(t, *sc, x) for t, sc, x in zip(ids[1:], scored, texts[1:])])
    return out

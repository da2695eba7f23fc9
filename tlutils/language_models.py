"""Left-to-right language models: a count-based bigram model with add-k smoothing and a small
fixed-window neural model, with sentence log-probabilities and perplexity.

Both read sentences as sequences of tokens (strings or ids) and predict each next token and
the end of the sentence, so their perplexities are comparable when they share a tokenizer.
The chapter *Terms I: from text to a trained classifier* (section *Language models*) trains
both on MRPC and compares natural with shuffled sentences.

References: n-gram smoothing, Chen & Goodman, "An Empirical Study of Smoothing Techniques for
Language Modeling" (1996), https://arxiv.org/abs/cmp-lg/9606011; neural language models,
Bengio et al. (2003), https://www.jmlr.org/papers/v3/bengio03a.html; recurrent LMs for
transfer, Howard & Ruder (2018), https://arxiv.org/abs/1801.06146.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Iterable, Optional, Sequence

import torch
from torch import nn

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class BigramLM:
    """``P(w_i | w_{i-1}) = (c(w_{i-1}, w_i) + k) / (c(w_{i-1}) + k·V)``: a bigram model with
    add-k smoothing, over a vocabulary fixed at :meth:`fit` (unseen tokens map to ``<unk>``).

    ``V`` counts every token that can be predicted: the training tokens, ``</s>`` and
    ``<unk>``. ``k = 1`` is Laplace smoothing; smaller ``k`` moves less probability mass to
    unseen pairs.

    Example:
        >>> lm = BigramLM(k=0.1).fit([["the", "cat", "sat"], ["the", "dog", "sat"]])
        >>> lm.perplexity([["the", "cat", "sat"]]) < lm.perplexity([["sat", "cat", "the"]])
        True

    Reference: Chen & Goodman (1996), https://arxiv.org/abs/cmp-lg/9606011.
    """

    def __init__(self, k: float = 1.0) -> None:
        if k <= 0:
            raise ValueError(f"k={k}: add-k smoothing needs k > 0 (else unseen pairs get probability 0).")
        self.k = k
        self.pairs: Counter = Counter()
        self.contexts: Counter = Counter()
        self.vocab: set[Hashable] = set()

    def _known(self, token: Hashable) -> Hashable:
        return token if token in self.vocab else UNK

    def fit(self, sentences: Iterable[Sequence[Hashable]]) -> "BigramLM":
        """Count the bigrams of ``sentences`` (each wrapped in ``<s>`` ... ``</s>``)."""
        sentences = [list(s) for s in sentences]
        self.vocab = {t for s in sentences for t in s} | {EOS, UNK}
        for sentence in sentences:
            padded = [BOS, *sentence, EOS]
            self.pairs.update(zip(padded[:-1], padded[1:]))
            self.contexts.update(padded[:-1])
        return self

    def prob(self, previous: Hashable, token: Hashable) -> float:
        """``P(token | previous)``, smoothed."""
        previous = previous if previous == BOS else self._known(previous)
        token = self._known(token)
        return (self.pairs[(previous, token)] + self.k) / (self.contexts[previous] + self.k * len(self.vocab))

    def log_prob(self, sentence: Sequence[Hashable]) -> float:
        """``log P(sentence, </s>)`` in nats: the sum of the bigram log-probabilities."""
        padded = [BOS, *sentence, EOS]
        return sum(math.log(self.prob(a, b)) for a, b in zip(padded[:-1], padded[1:]))

    def perplexity(self, sentences: Iterable[Sequence[Hashable]]) -> float:
        """``exp(-Σ log P / number of predicted tokens)``, ``</s>`` counted as a token."""
        sentences = list(sentences)
        total = sum(self.log_prob(s) for s in sentences)
        return math.exp(-total / sum(len(s) + 1 for s in sentences))


class WindowLanguageModel(nn.Module):
    """A fixed-window neural language model: the embeddings of the previous ``context`` tokens,
    concatenated, a tanh hidden layer, and a softmax over the vocabulary.

    Every position is predicted in parallel (no recurrence), so it trains fast on a CPU.
    ``forward(ids, targets)`` returns ``(logits, loss)``; ``loss`` is the mean cross-entropy
    over the targets that are not ``-100`` (None without targets). Positions before the start
    see the ``pad_id`` embedding.

    Reference: Bengio et al., "A Neural Probabilistic Language Model" (JMLR 2003),
    https://www.jmlr.org/papers/v3/bengio03a.html.
    """

    def __init__(self, vocab_size: int, context: int = 3, embed_dim: int = 64, hidden_size: int = 128,
                 pad_id: int = 0) -> None:
        super().__init__()
        self.context, self.pad_id = context, pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.hidden = nn.Linear(context * embed_dim, hidden_size)
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        B, T = ids.shape
        padded = nn.functional.pad(ids, (self.context - 1, 0), value=self.pad_id)  # (B, T + n - 1)
        windows = padded.unfold(1, self.context, 1)  # (B, T, n): the n tokens up to position t
        x = self.embed(windows).flatten(2)  # (B, T, n * E)
        logits = self.head(torch.tanh(self.hidden(x)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss


def lm_batch(sequences: Sequence[Sequence[int]], bos_id: int, eos_id: int,
             pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``<s> w1 … wn`` and targets ``w1 … wn </s>``, right-padded (targets with -100).

    Shapes:
        both outputs ``(B, T)`` with ``T = 1 + the longest sequence``.
    """
    longest = max(len(s) for s in sequences) + 1
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), longest), -100, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s) + 1] = torch.tensor([bos_id, *s], dtype=torch.long)
        targets[i, : len(s) + 1] = torch.tensor([*s, eos_id], dtype=torch.long)
    return ids, targets


def train_language_model(model: WindowLanguageModel, sequences: Sequence[Sequence[int]], *, bos_id: int,
                         eos_id: int, steps: int, batch_size: int = 32, learning_rate: float = 3e-3,
                         seed: int = 0) -> list[float]:
    """Train ``model`` for ``steps`` Adam steps on random batches of ``sequences``.

    Batches are drawn with a ``torch.Generator`` seeded by ``seed`` (the global RNG is not
    used); gradients are clipped to norm 1.

    Why a loop of its own and not :func:`tlutils.train.fit`: the chapter shows the whole
    language-model recipe (sample windows, predict the next token, cross-entropy, step) on one
    screen, for a model of a few hundred thousand parameters trained for a few hundred random
    batches, with replacement, not in epochs. A transformer language model trains through
    ``fit``: a ``collate_fn`` builds its (masked or shifted) batches and an ``eval_fn`` returns
    its held-out loss (``select_metric="loss", greater_is_better=False``).

    Returns:
        the training loss of every step (nats per token).
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(len(sequences), (batch_size,), generator=generator).tolist()
        ids, targets = lm_batch([sequences[i] for i in index], bos_id, eos_id)
        _, loss = model(ids, targets)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def sequence_log_probs(model: WindowLanguageModel, sequences: Sequence[Sequence[int]], *, bos_id: int,
                       eos_id: int, batch_size: int = 256) -> torch.Tensor:
    """``log P(w1 … wn </s>)`` (nats) of each sequence under ``model``.

    Shapes:
        the result ``(N,)``.
    """
    model.eval()
    out = []
    for start in range(0, len(sequences), batch_size):
        ids, targets = lm_batch(sequences[start:start + batch_size], bos_id, eos_id)
        logits, _ = model(ids)  # (B, T, V)
        logp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
        out.append((logp * (targets != -100)).sum(-1))
    return torch.cat(out)


def perplexity(model: WindowLanguageModel, sequences: Sequence[Sequence[int]], *, bos_id: int,
               eos_id: int) -> float:
    """``exp(-Σ log P / number of predicted tokens)`` over ``sequences`` (``</s>`` counted)."""
    total = sequence_log_probs(model, sequences, bos_id=bos_id, eos_id=eos_id).sum().item()
    return math.exp(-total / sum(len(s) + 1 for s in sequences))

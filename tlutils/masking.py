"""BERT's masked-language-model corruption: choose 15% of the tokens, and of those replace 80%
by ``[MASK]``, 10% by a random token and leave 10% unchanged.

The chapter *Terms I: from text to a trained classifier* (section *Masking*) checks the
proportions statistically on MRPC and contrasts this *input masking* with the attention mask
that hides padding.

Reference: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (2019), https://arxiv.org/abs/1810.04805, section 3.1 and appendix C.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # what torch.nn.functional.cross_entropy skips by default


@dataclass(frozen=True)
class MaskingVocab:
    """What :func:`mask_tokens` needs to know about a vocabulary."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never chosen, never drawn as random replacements

    @classmethod
    def from_tokenizer(cls, tokenizer: "PreTrainedTokenizerBase") -> "MaskingVocab":
        """Read the ``[MASK]`` id, the vocabulary size and the special ids from a tokenizer."""
        return cls(tokenizer.mask_token_id, len(tokenizer), tuple(sorted(set(tokenizer.all_special_ids))))


def mask_tokens(input_ids: torch.Tensor, vocab: "MaskingVocab | PreTrainedTokenizerBase", *,
                attention_mask: Optional[torch.Tensor] = None, mlm_probability: float = 0.15,
                mask_fraction: float = 0.8, random_fraction: float = 0.1,
                generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for masked-language-model training, BERT's way.

    Each non-special, non-padding token is *chosen* with probability ``mlm_probability``. A
    chosen token becomes ``[MASK]`` with probability ``mask_fraction``, a random non-special
    token with probability ``random_fraction``, and stays as it is otherwise. The model must
    predict the original token at every chosen position (also the unchanged ones: it cannot
    know which they are), and nowhere else.

    Args:
        input_ids: token ids.
        vocab: a :class:`MaskingVocab` or a tokenizer to build one from.
        attention_mask: 1 for real tokens, 0 for padding (padding is never chosen; the pad id
            is special anyway, this also covers models that pad with another id).
        mlm_probability: the fraction of tokens chosen (0.15 in BERT).
        mask_fraction: of the chosen, the fraction replaced by ``[MASK]`` (0.8).
        random_fraction: of the chosen, the fraction replaced by a random token (0.1).
        generator: a seeded ``torch.Generator`` for reproducible masks; the global RNG is
            neither used nor advanced when one is given.

    Shapes:
        input_ids, attention_mask ``(B, T)``; both outputs ``(B, T)``.

    Returns:
        ``(masked_input_ids, labels)``: a new tensor (``input_ids`` is not modified) and the
        labels, equal to the original id at chosen positions and ``-100`` elsewhere (ignored
        by ``cross_entropy``).

    Reference: Devlin et al. (2019), https://arxiv.org/abs/1810.04805, section 3.1.
    """
    if not isinstance(vocab, MaskingVocab):
        vocab = MaskingVocab.from_tokenizer(vocab)
    if not 0.0 <= mask_fraction + random_fraction <= 1.0:
        raise ValueError(f"mask_fraction + random_fraction = {mask_fraction + random_fraction}: "
                         "must lie in [0, 1].")
    device = input_ids.device
    special = torch.isin(input_ids, torch.tensor(vocab.special_ids, device=device))  # (B, T)
    eligible = ~special
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    u = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T): is it chosen?
    chosen = (u < mlm_probability) & eligible
    how = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, T): what happens
    to_mask = chosen & (how < mask_fraction)
    to_random = chosen & (how >= mask_fraction) & (how < mask_fraction + random_fraction)

    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    masked = input_ids.clone()
    masked[to_mask] = vocab.mask_token_id
    allowed = torch.ones(vocab.vocab_size, dtype=torch.bool)
    allowed[list(vocab.special_ids)] = False
    pool = allowed.nonzero().squeeze(1).to(device)  # (V - specials,)
    picks = torch.randint(len(pool), (int(to_random.sum()),), generator=generator, device=device)
    masked[to_random] = pool[picks]
    return masked, labels


def masking_fractions(input_ids: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor,
                      mask_token_id: int, eligible: torch.Tensor) -> dict[str, float]:
    """What :func:`mask_tokens` did, as fractions: ``chosen`` (of the eligible tokens) and
    ``mask``, ``random``, ``unchanged`` (of the chosen ones).

    A random replacement that happens to draw the original token counts as ``unchanged``
    (probability 1/V per random draw).

    Shapes:
        all tensors ``(B, T)``; ``eligible`` is boolean (real, non-special tokens).
    """
    chosen = labels != IGNORE_INDEX
    n = max(int(chosen.sum()), 1)
    is_mask = chosen & (masked == mask_token_id)
    unchanged = chosen & (masked == input_ids)
    return {"chosen": int(chosen.sum()) / max(int(eligible.sum()), 1),
            "mask": int(is_mask.sum()) / n,
            "random": int((chosen & ~is_mask & ~unchanged).sum()) / n,
            "unchanged": int(unchanged.sum()) / n,
            "n_eligible": int(eligible.sum()), "n_chosen": int(chosen.sum())}


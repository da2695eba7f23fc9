"""Adversarial training in embedding space: the Fast Gradient Method (FGM).

The book explains it in *Terms II: learning across tasks and domains* (section
``term-adversarial-training``).

Miyato, Dai & Goodfellow (*Adversarial Training Methods for Semi-Supervised Text
Classification*, ICLR 2017, https://arxiv.org/abs/1605.07725) perturb the word embeddings of
an input in the direction that increases the loss most, ``r = epsilon * g / ||g||_2`` with
``g`` the gradient of the loss with respect to the embeddings, and train on the clean and the
perturbed input. Like the widely used NLP implementations, :class:`FGM` perturbs the *weight*
of the word-embedding matrix: its gradient is nonzero only in the rows of the tokens in the
batch, so only those rows move. The norm is taken over the whole batch's gradient (one
``epsilon`` per batch), not per sequence as in the paper.
"""

from __future__ import annotations

from typing import Callable

import torch

from tlutils.errors import ConfigError


def _embedding_parameter(model: torch.nn.Module, emb_name: str) -> tuple[str, torch.nn.Parameter]:
    found = [(n, p) for n, p in model.named_parameters() if emb_name in n]
    if len(found) != 1:
        names = ", ".join(n for n, _ in found) or "none"
        raise ConfigError(f"FGM needs exactly one parameter whose name contains {emb_name!r}; "
                          f"found {names}. Pass emb_name= to pick the word embeddings.")
    name, param = found[0]
    if not param.requires_grad:
        raise ConfigError(f"{name} is frozen (requires_grad=False): FGM needs its gradient.")
    return name, param


class FGM:
    """Perturb the word embeddings along their gradient, and put them back exactly.

    Usage (one training step)::

        fgm = FGM(model, epsilon=1.0)
        model(**batch).loss.backward()        # gradients of the clean loss
        fgm.attack()                          # embeddings += epsilon * g / ||g||
        model(**batch).loss.backward()        # adds the gradients of the adversarial loss
        fgm.restore()                         # embeddings back, bit for bit
        optimizer.step(); optimizer.zero_grad()

    With :func:`tlutils.train.fit`, use :func:`fgm_loss_fn` instead.

    Args:
        model: a model with a word-embedding matrix (BERT: ``...embeddings.word_embeddings``).
        epsilon: the L2 norm of the perturbation (over the whole matrix).
        emb_name: a substring that names exactly one parameter, the word embeddings.

    Reference: Miyato et al., ICLR 2017, https://arxiv.org/abs/1605.07725.
    """

    def __init__(self, model: torch.nn.Module, epsilon: float = 1.0,
                 emb_name: str = "word_embeddings") -> None:
        if epsilon < 0:
            raise ConfigError(f"epsilon={epsilon}: the perturbation norm must be >= 0.")
        self.model = model
        self.epsilon = epsilon
        self.name, self.param = _embedding_parameter(model, emb_name)
        self.backup: torch.Tensor | None = None

    def attack(self) -> float:
        """Add ``epsilon * grad / ||grad||`` to the embeddings (after a ``backward``).

        Returns:
            the norm of the gradient (0.0 when there was none: then nothing moves).
        """
        if self.backup is not None:
            raise RuntimeError("FGM.attack() called twice without restore(): restore first.")
        grad = self.param.grad
        if grad is None:
            raise RuntimeError(f"{self.name} has no gradient: call loss.backward() before attack().")
        self.backup = self.param.data.clone()
        norm = torch.linalg.vector_norm(grad.float())
        if norm > 0 and torch.isfinite(norm):
            self.param.data.add_((self.epsilon / norm) * grad.to(self.param.dtype))
        return float(norm)

    def restore(self) -> None:
        """Put back the embeddings saved by :meth:`attack`, exactly."""
        if self.backup is None:
            raise RuntimeError("FGM.restore() without attack(): nothing to restore.")
        self.param.data.copy_(self.backup)
        self.backup = None


LossFn = Callable[[torch.nn.Module, dict], "tuple[torch.Tensor, dict[str, float]]"]


def fgm_loss_fn(epsilon: float = 1.0, emb_name: str = "word_embeddings",
                adversarial_weight: float = 1.0) -> LossFn:
    """A ``loss_fn(model, batch) -> (loss, stats)`` for :func:`tlutils.train.fit` that trains on
    the clean and the FGM-perturbed batch.

    ``fit`` calls ``backward`` once, on the returned loss, so the perturbation is computed
    inside: the gradient ``g`` of the clean loss with respect to the word embeddings comes from
    ``torch.autograd.grad`` (it leaves every ``.grad`` untouched), the embeddings move by
    ``epsilon * g / ||g||``, the adversarial loss is computed, and the embeddings are restored
    exactly *before* returning. The returned ``clean + adversarial_weight * adversarial`` then
    has the same gradient as the two ``backward`` calls of :class:`FGM`'s recipe (an embedding
    lookup's backward needs only the token ids, not the embedding values).

    Single process only: under multi-GPU data parallelism ``autograd.grad`` would run DDP's
    gradient hooks an extra time.

    Args:
        epsilon: the L2 norm of the perturbation.
        emb_name: a substring naming the word-embedding parameter.
        adversarial_weight: the weight of the adversarial loss.

    Returns:
        ``loss_fn``; its stats hold ``clean_loss``, ``adversarial_loss`` and ``grad_norm``.

    Reference: Miyato et al., ICLR 2017, https://arxiv.org/abs/1605.07725.
    """
    if epsilon < 0:
        raise ConfigError(f"epsilon={epsilon}: the perturbation norm must be >= 0.")

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        _, param = _embedding_parameter(model, emb_name)
        clean = model(**batch).loss
        (grad,) = torch.autograd.grad(clean, param, retain_graph=True)  # (V, H), nonzero rows = batch tokens
        norm = torch.linalg.vector_norm(grad.float())
        backup = param.data.clone()
        if norm > 0 and torch.isfinite(norm):
            param.data.add_((epsilon / norm) * grad.to(param.dtype))
        try:
            adversarial = model(**batch).loss
        finally:
            param.data.copy_(backup)
        loss = clean + adversarial_weight * adversarial
        return loss, {"clean_loss": float(clean.detach()), "adversarial_loss": float(adversarial.detach()),
                      "grad_norm": float(norm)}

    return loss_fn

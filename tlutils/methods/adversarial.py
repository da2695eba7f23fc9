"""Adversarial training in embedding space: FGM, PGD and FreeLB, and a PGD attack for evaluation.

The book explains FGM in *Terms II: learning across tasks and domains* (section
``term-adversarial-training``) and all three methods, with the min-max problem they
approximate, in the chapter *Adversarial training* (``adversarial-training``).

Miyato, Dai & Goodfellow (*Adversarial Training Methods for Semi-Supervised Text
Classification*, ICLR 2017, https://arxiv.org/abs/1605.07725) perturb the word embeddings of
an input in the direction that increases the loss most, ``r = epsilon * g / ||g||_2`` with
``g`` the gradient of the loss with respect to the embeddings, and train on the clean and the
perturbed input. Two formulations live here:

- :class:`FGM` and :func:`fgm_loss_fn` perturb the *weight* of the word-embedding matrix, like
  the widely used NLP implementations: its gradient is nonzero only in the rows of the tokens
  in the batch, so only those rows move, with one norm for the whole batch.
- :func:`fgm_embedding_loss_fn`, :func:`pgd_loss_fn`, :func:`freelb_loss_fn` and
  :func:`pgd_attack` perturb the embedding *output* (a forward hook on
  ``model.get_input_embeddings()``) by a per-example ``delta`` of shape (B, T, H): each example
  has its own epsilon-ball, in which PGD's projection is well defined, and PGD with one step
  of size epsilon and no random start is exactly :func:`fgm_embedding_loss_fn`.

All loss functions run in one process only: under ``accelerate launch`` with more than one
process they raise :class:`~tlutils.errors.ConfigError` (they make several forward passes per
backward, which DistributedDataParallel does not allow).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from tlutils.data import MODEL_INPUTS
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
    gradient hooks an extra time, so under ``accelerate launch`` with more than one process it
    raises :class:`~tlutils.errors.ConfigError`.

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
        _single_process("fgm_loss_fn")
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


# --------------------------------------------------------------------------- embedding-output attacks
#
# PGD, FreeLB and the embedding-output FGM perturb the *output* of the word-embedding module
# (found architecture-neutrally with ``model.get_input_embeddings()``) by a per-example
# ``delta`` of shape (B, T, H), added by a forward hook. The weights never change, so nothing
# has to be restored but the hook, and every example has its own epsilon-ball:
# ``||delta_i||_2 <= epsilon`` over its real tokens (padding positions stay 0).
#
# All three are ``loss_fn``s for :func:`tlutils.train.fit`, which calls ``backward`` once on the
# returned loss. The gradients of the points visited before the last one (the clean point of
# PGD, the first K-1 points of FreeLB) are taken with ``torch.autograd.grad`` in the same pass
# that gives the ascent direction, and handed to ``fit``'s backward through the term
# ``sum(p * g) - sum(p * g).detach()`` (value 0, gradient ``g``). So PGD with K ascent steps
# costs K + 1 forward/backward passes and FreeLB K, as in their papers, and the returned loss
# has the value of the objective.


def _single_process(what: str) -> None:
    """Refuse data-parallel runs: these loss functions make several passes per backward."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ConfigError(f"{what} runs in one process only (it makes several forward passes per backward, which "
                          f"DistributedDataParallel does not allow): run without `accelerate launch` or with --num_processes 1.")


def _check_attack(epsilon: float, steps: int, step_size: Optional[float]) -> None:
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ConfigError(f"epsilon={epsilon}: the radius of the perturbation ball must be a finite number >= 0.")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps={steps}: use at least one ascent step (steps=1 with step_size=epsilon is FGM).")
    if step_size is not None and not (math.isfinite(step_size) and step_size >= 0):
        raise ConfigError(f"step_size={step_size}: use a finite step size >= 0 (None: 2.5 * epsilon / steps).")


def _step_size(epsilon: float, steps: int, step_size: Optional[float]) -> float:
    """Check the settings; the step size alpha (None: ``2.5 * epsilon / steps``, Madry et al.'s rule)."""
    _check_attack(epsilon, steps, step_size)
    return 2.5 * epsilon / steps if step_size is None else step_size


def word_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """The word-embedding module of a (possibly wrapped) model, via ``get_input_embeddings()``."""
    inner = getattr(model, "module", model)  # DDP / accelerate wrappers keep the model in .module
    getter = getattr(inner, "get_input_embeddings", None)
    module = getter() if getter is not None else None
    if module is None:
        raise ConfigError(f"{type(inner).__name__} has no get_input_embeddings(): use a Hugging Face model "
                          "(or give it that method returning the word-embedding module).")
    return module


@contextlib.contextmanager
def perturbed_embeddings(model: torch.nn.Module, delta: torch.Tensor) -> Iterator[None]:
    """Add ``delta`` to the word-embedding output inside the block; the hook goes away after it.

    Shapes:
        delta (B, T, H): the batch's input ids (B, T) give embeddings (B, T, H).
    """
    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.shape != delta.shape:
            raise ConfigError(f"delta has shape {tuple(delta.shape)} but the embeddings {tuple(output.shape)}: "
                              "make delta with zero_delta(model, batch).")
        return output + delta.to(output.dtype)

    handle = word_embeddings(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def token_mask(batch: dict) -> torch.Tensor:
    """``(B, T, 1)`` float mask of the real tokens (the attention mask; all ones without one)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    return mask.unsqueeze(-1).float()  # (B, T, 1)


def zero_delta(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """A zero perturbation ``(B, T, H)`` on the batch's device, float32."""
    emb = word_embeddings(model)
    hidden = getattr(emb, "embedding_dim", None) or emb.weight.shape[-1]
    ids = batch["input_ids"]
    return torch.zeros((*ids.shape, hidden), device=ids.device, dtype=torch.float32)


def example_norms(delta: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norms ``(B,)`` of ``delta`` ``(B, T, H)``."""
    return torch.linalg.vector_norm(delta.flatten(1), dim=1)


def project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project each example's ``delta`` onto the L2 ball of radius ``epsilon`` (B, T, H) -> (B, T, H)."""
    norms = example_norms(delta).clamp_min(1e-12)  # (B,)
    return delta * (epsilon / norms).clamp(max=1.0).view(-1, 1, 1)


def normalized(grad: torch.Tensor) -> torch.Tensor:
    """Each example's gradient divided by its L2 norm (zero stays zero) (B, T, H) -> (B, T, H)."""
    norms = example_norms(grad)  # (B,)
    scale = torch.where(norms > 0, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))
    return grad * scale.view(-1, 1, 1)


def random_delta(like: torch.Tensor, mask: torch.Tensor, epsilon: float,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random start inside the ball: a uniformly random direction (on the real tokens) with a
    norm drawn uniformly from [0, epsilon], per example. Shapes: like (B, T, H), mask (B, T, 1)."""
    z = torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device) * mask
    radius = torch.rand(like.shape[0], generator=generator).to(like.device) * epsilon  # (B,)
    return normalized(z) * radius.view(-1, 1, 1)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in (*MODEL_INPUTS, "labels")}


def loss_at(model: torch.nn.Module, batch: dict, delta: torch.Tensor) -> torch.Tensor:
    """The model's loss on ``batch`` with ``delta`` added to its word embeddings."""
    with perturbed_embeddings(model, delta):
        return model(**_inputs(batch)).loss


def ascent_step(delta: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float,
                mask: torch.Tensor) -> torch.Tensor:
    """One projected step up the loss: ``project(delta + step_size * grad / ||grad||, epsilon)``,
    per example, padding kept at 0. Shapes: delta, grad (B, T, H), mask (B, T, 1)."""
    return project((delta + step_size * normalized(grad)) * mask, epsilon)


def pgd_attack(model: torch.nn.Module, batch: dict, epsilon: float, steps: int = 3,
               step_size: Optional[float] = None, random_start: bool = False,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The projected-gradient attack on the word embeddings: a ``delta`` that raises the loss.

    ``delta_0`` is 0 (or random in the ball), then ``steps`` times ``delta <- project(delta +
    step_size * g / ||g||)`` with ``g`` the gradient of the loss at ``delta``, per example. The
    model's weights and their ``.grad`` are left alone (the gradients come from
    ``torch.autograd.grad``); call it in ``eval()`` mode for a deterministic attack.

    Args:
        model: a Hugging Face classifier; ``batch`` must carry ``labels``.
        epsilon: the radius of each example's L2 ball (over all its token embeddings).
        steps: K, the number of ascent steps (K gradient evaluations).
        step_size: alpha; None: ``2.5 * epsilon / steps`` (Madry et al.'s rule).
        random_start: start at a random point of the ball instead of 0.

    Shapes:
        batch["input_ids"] (B, T) -> delta (B, T, H), ``||delta_i|| <= epsilon``.

    Reference: Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083.
    """
    alpha = _step_size(epsilon, steps, step_size)
    mask = token_mask(batch)
    delta = zero_delta(model, batch)
    if random_start:
        delta = random_delta(delta, mask, epsilon, generator)
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_at(model, batch, delta), delta)
            grad = grad.float()
            delta = ascent_step(delta.detach(), grad, alpha, epsilon, mask)
    return delta.detach()


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _with_gradients(params: Sequence[torch.nn.Parameter], grads: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """A zero-valued term whose gradient with respect to ``params`` is ``grads``."""
    terms = [(p * g.detach().to(p.dtype)).sum() for p, g in zip(params, grads) if g is not None]
    if not terms:
        return torch.zeros(())
    total = torch.stack(terms).sum()
    return total - total.detach()


def _clean_and_grads(model: torch.nn.Module, batch: dict, delta: torch.Tensor,
                     params: Sequence[torch.nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Loss at ``delta``, its gradient with respect to ``delta`` and to ``params``: one pass."""
    delta = delta.detach().requires_grad_(True)
    loss = loss_at(model, batch, delta)
    grads = torch.autograd.grad(loss, [delta, *params], allow_unused=True)
    return loss.detach(), grads[0], list(grads[1:])


def fgm_embedding_loss_fn(epsilon: float = 1.0, adversarial_weight: float = 1.0) -> LossFn:
    """FGM on the word-embedding *outputs*, per example: ``clean + w * adversarial`` for ``fit``.

    ``r_i = epsilon * g_i / ||g_i||`` with ``g_i`` the gradient of the clean loss with respect
    to example i's embeddings (B, T, H), as in Miyato et al. (who normalise per sequence). Two
    forward/backward passes per step. This is the formulation :func:`pgd_loss_fn` reduces to
    with ``steps=1, step_size=epsilon, random_start=False`` (a unit test checks equality); the
    weight-perturbing :func:`fgm_loss_fn` differs from it where a token occurs twice in a batch
    (one matrix row moves for all its occurrences) and in its one norm per batch.

    Reference: Miyato et al., ICLR 2017, https://arxiv.org/abs/1605.07725.
    """
    _check_attack(epsilon, 1, None)

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        _single_process("fgm_embedding_loss_fn")
        params = _trainable(model)
        zero = zero_delta(model, batch)
        clean, grad, clean_grads = _clean_and_grads(model, batch, zero, params)
        r = epsilon * normalized(grad) * token_mask(batch)  # (B, T, H)
        adversarial = loss_at(model, batch, r)
        loss = adversarial_weight * adversarial + _with_gradients(params, clean_grads) + clean
        return loss, {"clean_loss": float(clean), "adversarial_loss": float(adversarial.detach()),
                      "delta_norm": float(example_norms(r).mean())}

    return loss_fn


def pgd_loss_fn(epsilon: float = 1.0, steps: int = 3, step_size: Optional[float] = None,
                random_start: bool = False, adversarial_weight: float = 1.0) -> LossFn:
    """PGD adversarial training on the word embeddings: ``clean + w * loss(x + delta_K)`` for ``fit``.

    The inner maximisation runs K projected ascent steps from ``delta_0`` (0, or random in the
    ball); the outer minimisation takes the gradient of the clean loss and of the loss at the
    last point ``delta_K``. Without a random start the clean pass also gives the first ascent
    direction, so a step costs K + 1 forward/backward passes (the ascent passes in between need
    no weight gradients); with one it costs K + 2. With ``steps=1, step_size=epsilon`` and no
    random start it is exactly :func:`fgm_embedding_loss_fn`.

    Args:
        epsilon: the radius of each example's L2 ball.
        steps: K ascent steps.
        step_size: alpha; None: ``2.5 * epsilon / steps``.
        random_start: start the ascent at a random point of the ball.
        adversarial_weight: w.

    Returns:
        ``loss_fn``; stats ``clean_loss``, ``adversarial_loss``, ``delta_norm`` (mean over examples).

    Reference: Madry et al., ICLR 2018, https://arxiv.org/abs/1706.06083.
    """
    alpha = _step_size(epsilon, steps, step_size)

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        _single_process("pgd_loss_fn")
        params = _trainable(model)
        mask = token_mask(batch)
        zero = zero_delta(model, batch)
        clean, grad, clean_grads = _clean_and_grads(model, batch, zero, params)
        if random_start:
            delta, remaining = random_delta(zero, mask, epsilon), steps
        else:
            delta, remaining = ascent_step(zero, grad, alpha, epsilon, mask), steps - 1
        for _ in range(remaining):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_at(model, batch, delta), delta)
            delta = ascent_step(delta.detach(), grad, alpha, epsilon, mask)
        adversarial = loss_at(model, batch, delta.detach())
        loss = adversarial_weight * adversarial + _with_gradients(params, clean_grads) + clean
        return loss, {"clean_loss": float(clean), "adversarial_loss": float(adversarial.detach()),
                      "delta_norm": float(example_norms(delta).mean())}

    return loss_fn


def freelb_loss_fn(epsilon: float = 1.0, steps: int = 3, step_size: Optional[float] = None) -> LossFn:
    """FreeLB: the mean loss over K points of an ascent path in the embedding ball, for ``fit``.

    From a random ``delta_0`` in the ball, each of the K passes computes the loss at
    ``delta_t``, its gradient with respect to the weights (accumulated, divided by K: the
    "free" large batch) and with respect to ``delta_t`` (the next ascent step, projected). K
    forward/backward passes per step; there is no separate clean term.

    Args:
        epsilon: the radius of each example's L2 ball.
        steps: K.
        step_size: alpha; None: ``2.5 * epsilon / steps``.

    Returns:
        ``loss_fn``; stats ``first_loss`` (at ``delta_0``), ``last_loss`` (at ``delta_{K-1}``), ``delta_norm``.

    Reference: Zhu et al., ICLR 2020, https://arxiv.org/abs/1909.11764.
    """
    alpha = _step_size(epsilon, steps, step_size)

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        _single_process("freelb_loss_fn")
        params = _trainable(model)
        mask = token_mask(batch)
        delta = random_delta(zero_delta(model, batch), mask, epsilon)
        summed: list[Optional[torch.Tensor]] = [None] * len(params)
        values = []
        for _ in range(steps - 1):
            value, grad, grads = _clean_and_grads(model, batch, delta, params)
            values.append(value)
            summed = [g if s is None else (s if g is None else s + g) for s, g in zip(summed, grads)]
            delta = ascent_step(delta, grad, alpha, epsilon, mask)
        last = loss_at(model, batch, delta.detach())
        earlier = torch.stack(values).sum() if values else torch.zeros((), device=last.device)
        accumulated = [None if s is None else s / steps for s in summed]
        loss = last / steps + _with_gradients(params, accumulated) + earlier / steps
        return loss, {"first_loss": float(values[0] if values else last.detach()),
                      "last_loss": float(last.detach()), "delta_norm": float(example_norms(delta).mean())}

    return loss_fn


def predict_under_attack(model: torch.nn.Module, dataset: Any, epsilons: Sequence[float], *,
                         steps: int = 1, step_size_ratio: float = 2.5, batch_size: int = 64,
                         pad_token_id: int = 0, mixed_precision: str = "no") -> dict[float, np.ndarray]:
    """Logits ``(N, C)`` of a labelled tokenized split under a PGD attack of each radius.

    A pure function of the model (set to ``eval()`` here, weights untouched): for each epsilon,
    :func:`pgd_attack` with ``steps`` and ``step_size = step_size_ratio * epsilon / steps``,
    then a forward pass at the attacked point. With ``steps=1`` the attack direction does not
    depend on epsilon (one gradient per batch serves every radius). ``epsilon = 0`` is the
    clean prediction. ``mixed_precision`` as in :func:`tlutils.train.predict` ("no": fp32;
    "auto": bf16/fp16 autocast where the device supports it, faster and slightly less exact).

    Returns:
        ``{epsilon: logits (N, C)}`` in the split's order.
    """
    from tlutils.config import resolve_mixed_precision
    from tlutils.data import make_loader

    for eps in epsilons:
        _check_attack(eps, steps, None)
    model.eval()
    device = next(model.parameters()).device
    precision = resolve_mixed_precision(mixed_precision, cpu=device.type != "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    out = {float(e): None for e in epsilons}
    loader = make_loader(dataset, batch_size, shuffle=False, pad_token_id=pad_token_id)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        idx = batch.pop("idx").cpu()
        if "labels" not in batch:
            raise ConfigError("predict_under_attack needs a labelled split (the attack raises the loss of the gold label).")
        shared = None
        if steps == 1:  # one direction for every radius
            zero = zero_delta(model, batch).requires_grad_(True)
            with torch.enable_grad(), autocast():
                (grad,) = torch.autograd.grad(loss_at(model, batch, zero), zero)
            shared = normalized(grad) * token_mask(batch)
        for eps in out:
            if eps == 0:
                delta = zero_delta(model, batch)
            elif shared is not None:
                delta = project(min(step_size_ratio, 1.0) * eps * shared, eps)  # = one ascent step from 0
            else:
                with autocast():
                    delta = pgd_attack(model, batch, eps, steps, step_size_ratio * eps / steps)
            with torch.no_grad(), autocast(), perturbed_embeddings(model, delta):
                logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits.float()  # (B, C)
            if out[eps] is None:
                out[eps] = np.zeros((len(dataset), logits.shape[-1]), dtype=np.float32)
            out[eps][idx.numpy()] = logits.cpu().numpy()
    return out

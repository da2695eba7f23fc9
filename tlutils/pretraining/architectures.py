"""Miniature BERT, ALBERT, RoBERTa, ELECTRA and GPT-2 configurations, built from scratch.

Every family shares one size (default: 4 layers, 128 hidden, 4 heads, 512 feed-forward, 130
positions -- RoBERTa's positions start after its padding id, so 128 tokens need 130), so that
the chapters compare *recipes*, not sizes:

========  ==================================  =============================================
family    pretraining model                   what differs
========  ==================================  =============================================
bert      ``BertForPreTraining``              MLM + NSP heads (Devlin et al., 2019, s. 3.1)
albert    ``AlbertForPreTraining``            factorised embeddings E, shared layers, SOP
                                              (Lan et al., 2020, https://arxiv.org/abs/1909.11942, s. 3.1)
roberta   ``RobertaForMaskedLM``              byte-level BPE, no NSP, one token type
                                              (Liu et al., 2019, https://arxiv.org/abs/1907.11692, s. 4)
electra   :class:`ElectraPair`                a small generator + the discriminator, shared
                                              embeddings (Clark et al., 2020, https://arxiv.org/abs/2003.10555, s. 2, 3.2)
gpt2      ``GPT2LMHeadModel``                 causal self-attention (Radford et al., 2019, s. 2.3)
========  ==================================  =============================================

ALBERT's two switches: ``embedding_size=E`` factorises the V x H embedding into V x E and E x H;
``share_layers=True`` gives every layer the same weights (``num_hidden_groups=1``), and
``share_layers=False`` gives each layer its own group (``num_hidden_groups=layers``) -- the
``transformers`` ALBERT always routes layers through groups, and one group per layer is an
unshared encoder. :func:`albert_parameter_count` is the formula; the tests check it against
the built model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

import torch

from tlutils.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

FAMILIES = ("bert", "albert", "roberta", "electra", "gpt2")
FAMILY_TOKENIZER = {"bert": "wordpiece", "albert": "wordpiece", "electra": "wordpiece",
                    "roberta": "bpe", "gpt2": "bpe"}
# Special-token ids of train_tokenizer's vocabularies (used when only a vocabulary size is given).
_IDS = {"wordpiece": {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3},
        "bpe": {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}}


def _ids(family: str, vocab: Union[int, "PreTrainedTokenizerBase"]) -> tuple[int, dict[str, int]]:
    if isinstance(vocab, int):
        return vocab, dict(_IDS[FAMILY_TOKENIZER[family]])
    names = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")
    # Any tokenizer fits any family (e.g. BERT with byte-level BPE isolates RoBERTa's tokenizer
    # change); its special ids are what the model must know.
    return len(vocab), {k: getattr(vocab, k) for k in names if getattr(vocab, k, None) is not None}


def mini_config(family: str, vocab_size: Union[int, "PreTrainedTokenizerBase"], *, hidden: int = 128,
                layers: int = 4, heads: int = 4, intermediate: int = 512, max_positions: int = 130,
                embedding_size: Optional[int] = None, share_layers: bool = False,
                dropout: float = 0.1) -> "PretrainedConfig":
    """The ``transformers`` configuration of a miniature model of ``family``.

    Args:
        family: ``bert``, ``albert``, ``roberta``, ``electra`` (the discriminator; see
            :func:`electra_generator_config`) or ``gpt2``.
        vocab_size: the vocabulary size, or the tokenizer (its size and special-token ids).
        hidden, layers, heads, intermediate: the encoder's size (H, L, A, feed-forward).
        max_positions: position embeddings (RoBERTa needs ``max_length + 2``).
        embedding_size: E, the embedding width (ALBERT and ELECTRA; default H). ALBERT with
            E < H is the factorised embedding of Lan et al. (2020), section 3.1.
        share_layers: ALBERT only: all layers share one set of weights.
        dropout: hidden and attention dropout (0.1 in all five papers).

    Returns:
        a ``BertConfig``, ``AlbertConfig``, ``RobertaConfig``, ``ElectraConfig`` or ``GPT2Config``.
    """
    if family not in FAMILIES:
        raise ConfigError(f"family={family!r}: use one of {', '.join(FAMILIES)}.")
    if hidden % heads:
        raise ConfigError(f"hidden={hidden} is not divisible by heads={heads}: choose heads dividing hidden.")
    if embedding_size is not None and family not in ("albert", "electra"):
        raise ConfigError(f"embedding_size is an ALBERT/ELECTRA setting; family={family!r} embeds at "
                          f"hidden={hidden} (use family='albert' for a factorised embedding).")
    if share_layers and family != "albert":
        raise ConfigError(f"share_layers is ALBERT's switch; use family='albert' (family={family!r}).")
    vocab, ids = _ids(family, vocab_size)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=intermediate, max_position_embeddings=max_positions,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **ids)
    if family == "bert":
        from transformers import BertConfig

        return BertConfig(**common)
    if family == "albert":
        from transformers import AlbertConfig

        return AlbertConfig(**common, embedding_size=embedding_size or hidden, inner_group_num=1,
                            num_hidden_groups=1 if share_layers else layers, hidden_act="gelu_new",
                            classifier_dropout_prob=dropout)
    if family == "roberta":
        from transformers import RobertaConfig

        return RobertaConfig(**common, type_vocab_size=1)
    if family == "electra":
        from transformers import ElectraConfig

        return ElectraConfig(**common, embedding_size=embedding_size or hidden)
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab, n_positions=max_positions, n_embd=hidden, n_layer=layers, n_head=heads,
                      n_inner=intermediate, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids)


def electra_generator_config(discriminator: "PretrainedConfig", size: float = 0.25) -> "PretrainedConfig":
    """The generator for an ELECTRA discriminator: hidden size, heads and feed-forward width
    scaled by ``size`` (1/4 for ELECTRA-Small, 1/3 for Base and Large: Clark et al., 2020,
    section 3.2 and appendix table 6), same depth and the same embedding width (the two share
    their token and position embeddings)."""
    from transformers import ElectraConfig

    if not 0 < size <= 1:
        raise ConfigError(f"size={size}: the generator's fraction of the discriminator, in (0, 1].")
    heads = max(1, round(discriminator.num_attention_heads * size))
    hidden = max(heads, round(discriminator.hidden_size * size / heads) * heads)
    config = ElectraConfig(**{**discriminator.to_dict(), "hidden_size": hidden, "num_attention_heads": heads,
                              "intermediate_size": max(1, round(discriminator.intermediate_size * size))})
    return config


def usable_positions(config: "PretrainedConfig") -> int:
    """How many tokens one sequence may hold (RoBERTa's positions start at ``pad_token_id + 1``)."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
    if config.model_type == "roberta":
        positions -= config.pad_token_id + 1
    return positions


def check_max_length(config: "PretrainedConfig", max_length: int) -> None:
    """Reject sequences longer than the model's positions (an index error deep inside otherwise)."""
    usable = usable_positions(config)
    if max_length > usable:
        total = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions")
        raise ConfigError(f"max_length={max_length} exceeds the {usable} positions of this {config.model_type} "
                          f"model: lower max_length or build it with max_positions={max_length + total - usable}.")


class ElectraPair(torch.nn.Module):
    """ELECTRA's two networks in one module, so ``fit`` trains (and checkpoints) both.

    The generator (a small masked LM) and the discriminator share token, position and
    token-type embeddings (Clark et al., 2020, section 3.2, "Weight sharing"); the generator's
    output layer is tied to the shared word embeddings as in BERT. Only the discriminator is
    kept for fine-tuning.

    Attributes:
        generator: ``ElectraForMaskedLM``.
        discriminator: ``ElectraForPreTraining`` (per-token "replaced?" logit).
        config: the discriminator's configuration.
    """

    def __init__(self, discriminator_config: "PretrainedConfig", generator_size: float = 0.25) -> None:
        super().__init__()
        from transformers import ElectraForMaskedLM, ElectraForPreTraining

        self.discriminator = ElectraForPreTraining(discriminator_config)
        self.generator = ElectraForMaskedLM(electra_generator_config(discriminator_config, generator_size))
        self.generator.electra.embeddings = self.discriminator.electra.embeddings
        self.generator.generator_lm_head.weight = self.discriminator.electra.embeddings.word_embeddings.weight
        self.config = self.discriminator.config


def build_pretraining_model(config: "PretrainedConfig", *, generator_size: float = 0.25) -> torch.nn.Module:
    """A randomly initialised model with the pretraining heads of its family (see the table in
    the module docstring). Seed first (:func:`tlutils.config.set_seed`) for reproducible weights."""
    import transformers as tf

    classes = {"bert": tf.BertForPreTraining, "albert": tf.AlbertForPreTraining,
               "roberta": tf.RobertaForMaskedLM, "gpt2": tf.GPT2LMHeadModel}
    if config.model_type == "electra":
        return ElectraPair(config, generator_size)
    if config.model_type not in classes:
        raise ConfigError(f"No pretraining model for model_type={config.model_type!r}: use mini_config() "
                          f"with one of {', '.join(FAMILIES)}.")
    return classes[config.model_type](config)


def albert_parameter_count(V: int, E: int, H: int, L: int, shared: bool, *, intermediate: Optional[int] = None,
                           max_positions: int = 130, type_vocab_size: int = 2) -> int:
    """Parameters of an ALBERT encoder (embeddings + transformer, no pooler or heads).

    The paper's point (Lan et al., 2020, section 3.1): the embedding costs ``V*E + E*H`` instead
    of ``V*H``, and with cross-layer sharing the encoder costs one layer instead of ``L``.

    Args:
        V, E, H, L: vocabulary, embedding width, hidden width, layers.
        shared: one set of layer weights for all ``L`` layers.
        intermediate: the feed-forward width (default ``4 * H``).
        max_positions, type_vocab_size: position and token-type embedding rows.

    Returns:
        ``V*E + P*E + T*E + 2E`` (embeddings and their LayerNorm) ``+ E*H + H`` (projection to
        the hidden width; ``transformers`` keeps it even when E == H) ``+ n * (4H^2 + 2HI + 9H + I)``
        per stored layer (Q, K, V, output with biases; two LayerNorms; the two feed-forward
        matrices with biases), ``n = 1`` shared, else ``L``.
    """
    intermediate = 4 * H if intermediate is None else intermediate
    embeddings = (V + max_positions + type_vocab_size) * E + 2 * E
    projection = E * H + H
    layer = 4 * H * H + 2 * H * intermediate + 9 * H + intermediate
    return embeddings + projection + (1 if shared else L) * layer

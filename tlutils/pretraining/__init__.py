"""Pretraining miniature BERT, ALBERT, RoBERTa, ELECTRA and GPT-2 models on the book's own text.

Part III of the book (*Pretrained models*) shows *how* pretraining works by doing it on a CPU in
minutes; this package is what its chapters call, one module per concept:

- :mod:`~tlutils.pretraining.corpus`: the corpus (training splits' sentences, de-duplicated,
  minus every evaluation sentence), documents kept as ordered sentences;
- :mod:`~tlutils.pretraining.tokenizer`: WordPiece and byte-level BPE vocabularies;
- :mod:`~tlutils.pretraining.architectures`: miniature configurations, ALBERT's switches and
  their parameter formula, ELECTRA's generator/discriminator pair;
- :mod:`~tlutils.pretraining.batches`: packed segments, NSP/SOP pairs, static and dynamic
  masking, causal-LM batches, replaced-token detection;
- :mod:`~tlutils.pretraining.objectives`: the losses (masked positions only, no ``(N, T, V)``
  logits) and held-out evaluation for ``fit``;
- :mod:`~tlutils.pretraining.runs`: ``pretrain(recipe)``, cached by the recipe's hash, resumable.

Everything trains through :func:`tlutils.train.fit`. A minimal run::

    from tlutils.pretraining import Recipe, pretrain
    run = pretrain(Recipe(family="bert", objective="mlm+nsp", steps=300))
    encoder = run.load(AutoModelForSequenceClassification, num_labels=2)

References: Devlin et al. (2019), BERT, https://arxiv.org/abs/1810.04805; Lan et al. (2020),
ALBERT, https://arxiv.org/abs/1909.11942; Liu et al. (2019), RoBERTa,
https://arxiv.org/abs/1907.11692; Clark et al. (2020), ELECTRA, https://arxiv.org/abs/2003.10555;
Radford et al. (2019), "Language Models are Unsupervised Multitask Learners" (GPT-2).
"""

from tlutils.pretraining.architectures import (FAMILIES, FAMILY_TOKENIZER, ElectraPair, albert_parameter_count,
                                               build_pretraining_model, check_max_length, electra_generator_config,
                                               mini_config, usable_positions)
from tlutils.pretraining.batches import (EpochBatchSampler, Layout, Pair, PretrainingCollator, duplicate,
                                         encode_pairs, make_examples, make_pairs, pack_segments, pack_stream,
                                         replace_tokens, sample_tokens, tokenize_documents)
from tlutils.pretraining.corpus import Corpus, Document, build_corpus, load_corpus, normalise, split_sentences
from tlutils.pretraining.objectives import (OBJECTIVES, PretrainingModel, causal_lm_loss, clm_eval_fn,
                                            masked_lm_loss, mlm_eval_fn, pair_loss, pretraining_loss, rtd_loss)
from tlutils.pretraining.runs import PretrainedRun, Recipe, pretrain, recipe_key, run_folder
from tlutils.pretraining.tokenizer import load_pretraining_tokenizer, train_tokenizer

__all__ = [
    "FAMILIES", "FAMILY_TOKENIZER", "OBJECTIVES", "Corpus", "Document", "ElectraPair", "EpochBatchSampler", "Layout",
    "Pair", "PretrainedRun", "PretrainingCollator", "PretrainingModel", "Recipe", "albert_parameter_count",
    "build_corpus", "build_pretraining_model", "causal_lm_loss", "check_max_length", "clm_eval_fn", "duplicate",
    "electra_generator_config", "encode_pairs", "load_corpus", "load_pretraining_tokenizer", "make_examples",
    "make_pairs", "masked_lm_loss", "mini_config", "mlm_eval_fn", "normalise", "pack_segments", "pack_stream",
    "pair_loss", "pretrain", "pretraining_loss", "recipe_key", "replace_tokens", "rtd_loss", "run_folder",
    "sample_tokens", "split_sentences", "tokenize_documents", "train_tokenizer",
    "usable_positions",
]

"""``tlutils.checkpoints``: the real-checkpoint path with tiny random models of each of the five
architectures and throwaway tokenizers, so that only the download stays untested."""

from __future__ import annotations

import pytest
import torch

from tlutils.checkpoints import (ARCHITECTURES, CHECKPOINTS, CITED, FinetuneRecipe, accepted_inputs,
                                 check_pair_encoding, finetune_checkpoint, with_token_types)
from tlutils.errors import ConfigError

WORDS = ("the company said shares were sold on monday first second text , . "
         + " ".join(str(i) for i in range(10))).split()
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# the model type of each checkpoint and a tiny configuration of it (AutoConfig.for_model)
TINY = {
    "bert": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
    "albert": dict(embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64),
    "roberta": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    type_vocab_size=1),
    "distilbert": dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64),
    "electra": dict(embedding_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64),
}


@pytest.fixture(scope="module")
def wordpiece_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(BERT_SPECIALS + WORDS) + "\n")
    return path


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("bpe")
    bpe = ByteLevelBPETokenizer()
    texts = [f"The company said {i} shares were sold on Monday. The first text, the second text." for i in range(50)]
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    return folder / "vocab.json", folder / "merges.txt"


def throwaway_tokenizer(family: str, wordpiece_vocab, bpe_files):
    """A tokenizer of the checkpoint's own class (its pair layout and segment ids), tiny vocabulary."""
    from transformers import (AlbertTokenizerFast, BertTokenizerFast, DistilBertTokenizerFast, ElectraTokenizerFast,
                              RobertaTokenizerFast)

    if family == "roberta":
        vocab, merges = bpe_files
        return RobertaTokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    if family == "albert":  # ALBERT's sentencepiece model cannot be built here; its layout is BERT's
        try:
            return AlbertTokenizerFast(vocab_file=None, tokenizer_object=BertTokenizerFast(
                vocab_file=str(wordpiece_vocab))._tokenizer, cls_token="[CLS]", sep_token="[SEP]",
                pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
        except Exception:  # noqa: BLE001 - older/newer constructors: fall back to the same layout
            return BertTokenizerFast(vocab_file=str(wordpiece_vocab))
    cls = {"bert": BertTokenizerFast, "distilbert": DistilBertTokenizerFast, "electra": ElectraTokenizerFast}[family]
    return cls(vocab_file=str(wordpiece_vocab))


def tiny_model(family: str, tokenizer, num_labels: int = 2):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), num_labels=num_labels,
                                  pad_token_id=tokenizer.pad_token_id, max_position_embeddings=160, **TINY[family])
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def test_the_checkpoint_list_and_the_cited_table():
    assert set(CHECKPOINTS) == set(ARCHITECTURES) and len(CHECKPOINTS) == 5
    cited = {row["checkpoint"]: row for row in CITED}
    assert cited["bert-base-cased"]["mrpc"] == "F1 88.85 / accuracy 84.07" and cited["bert-base-cased"]["rte"] == "accuracy 65.70"
    assert (cited["bert-base-uncased"]["mrpc"], cited["bert-base-uncased"]["rte"]) == ("88.6", "69.3")
    assert (cited["distilbert-base-uncased"]["mrpc"], cited["distilbert-base-uncased"]["rte"]) == ("87.5", "59.9")
    assert (cited["roberta-base"]["mrpc"], cited["roberta-base"]["rte"]) == ("90.2", "78.7")
    assert cited["google/electra-base-discriminator"]["rte"] == "accuracy 82.7"
    assert all(row["source"] and row["statistic"] for row in CITED)


def test_the_recipe_follows_the_papers():
    r = FinetuneRecipe()
    assert r.learning_rate in (5e-5, 3e-5, 2e-5) and r.batch_size in (16, 32) and 2 <= r.epochs <= 4
    assert r.max_length == 128 and r.warmup_fraction == 0.06 and r.mixed_precision == "auto"


def test_the_recipe_becomes_fit_settings_with_its_own_values():
    recipe = FinetuneRecipe()
    config = recipe.train_config(seed=3, select_best=False)
    assert (config.learning_rate, config.warmup_fraction, config.epochs, config.batch_size) == (2e-5, 0.06, 3, 32)
    assert (config.seed, config.select_best, config.weight_decay) == (3, False, 0.01)
    assert recipe.train_config(mixed_precision="no").mixed_precision == "no"  # a setting overrides the recipe


@pytest.mark.parametrize("family", list(TINY))
def test_pair_encoding_and_segment_ids_of_each_architecture(family, wordpiece_vocab, bpe_files):
    tokenizer = throwaway_tokenizer(family, wordpiece_vocab, bpe_files)
    model = tiny_model(family, tokenizer)
    if family == "albert":  # transformers 5's AlbertTokenizer returns no segment ids unless asked
        with pytest.raises(ConfigError, match="returns none"):
            check_pair_encoding(tokenizer, model)
    out = check_pair_encoding(with_token_types(tokenizer, model), model)
    if family == "roberta":
        assert out["separators"] == 2 and out["layout"] == "<s> A </s></s> B </s>"
        assert out["tokens"][0] == "<s>" and out["tokens"][-1] == "</s>"
    else:
        assert out["separators"] == 1 and out["tokens"][0] == "[CLS]" and out["tokens"][-1] == "[SEP]"
    if family in ("bert", "albert", "electra"):
        assert out["model_uses_token_types"] and out["token_type_ids"][-1] == 1 and out["token_type_ids"][0] == 0
    else:  # RoBERTa: one token type; DistilBERT: its forward takes none
        assert not out["model_uses_token_types"]
    assert ("token_type_ids" in accepted_inputs(model)) == (family != "distilbert")


def test_a_tokenizer_without_segment_ids_is_refused_for_a_model_that_embeds_them(wordpiece_vocab, bpe_files):
    roberta_tokenizer = throwaway_tokenizer("roberta", wordpiece_vocab, bpe_files)
    bert = tiny_model("bert", roberta_tokenizer)
    with pytest.raises(ConfigError, match="token types"):
        check_pair_encoding(roberta_tokenizer, bert)
    with pytest.raises(ConfigError, match="expected 0 for the first segment"):  # asked for, they are all 0
        check_pair_encoding(with_token_types(roberta_tokenizer, bert), bert)


@pytest.mark.parametrize("family", list(TINY))
def test_finetune_one_tiny_checkpoint_of_each_architecture_through_fit(family, wordpiece_vocab, bpe_files,
                                                                      tiny_task_dir, isolated_outputs):
    tokenizer = throwaway_tokenizer(family, wordpiece_vocab, bpe_files)
    model = tiny_model(family, tokenizer)
    name = next(c for c, a in ARCHITECTURES.items() if a == family)
    result = finetune_checkpoint(name, "mrpc", recipe=FinetuneRecipe(epochs=1, batch_size=4, max_length=32,
                                                                     learning_rate=1e-3, mixed_precision="no"),
                                 model=model, tokenizer=tokenizer, data_dir=tiny_task_dir, progress=False)
    assert result["architecture"] == family and result["task"] == "mrpc" and result["precision"] == "no"
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["f1"] <= 1.0
    assert len(result["predictions"]) == len(result["labels"]) == 12
    assert result["majority_accuracy"] == 0.5  # the fixture's labels alternate
    assert result["history"]["steps"] and result["train_seconds"] > 0


def test_the_benchmark_script_parses_its_arguments():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_checkpoints.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--seeds" in out.stdout and "--checkpoints" in out.stdout

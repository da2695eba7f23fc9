"""Properties of feature extraction: pair features, per-layer features and their cache,
masking in the CNN/BiGRU extractors, and reproducible training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlutils.errors import ConfigError, DataError
from tlutils.methods.features import (BiGRUEncoder, CNNEncoder, MLPProbe, SiamesePairClassifier, apply_vocabulary,
                                      cached_features, choose_probe_C, cls_pool, fit_probe, layer_features,
                                      mean_pool,
                                      pair_features, random_embeddings, static_embeddings, tokenize_pairs,
                                      train_classifier, training_vocabulary)
from tlutils.models import load_model

TEXTS_A = ["the cat sat on the mat.", "a much longer sentence about the quarterly results of the company.",
           "prices rose.", "he said no."]
TEXTS_B = ["a cat was sitting on the mat.", "the company reported its results for the quarter.",
           "prices fell sharply on monday.", "he refused."]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-bert", 2, seed=0)


def test_pair_features_have_four_blocks_in_numpy_and_torch():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    x = pair_features(u, v)
    assert x.shape == (5, 12)
    np.testing.assert_array_equal(x[:, :3], u)
    np.testing.assert_array_equal(x[:, 3:6], v)
    np.testing.assert_array_equal(x[:, 6:9], np.abs(u - v))
    np.testing.assert_array_equal(x[:, 9:], u * v)
    t = pair_features(torch.tensor(u), torch.tensor(v))
    np.testing.assert_array_equal(t.numpy(), x)
    stacked = pair_features(np.stack([u, v]), np.stack([v, u]))  # (L + 1, N, H) stacks work too
    assert stacked.shape == (2, 5, 12)
    with pytest.raises(ConfigError, match="same shape"):
        pair_features(u, v[:, :2])


def test_pooling():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)  # (B, T, H)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(mean_pool(hidden, mask)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(cls_pool(hidden), hidden[:, 0])


def test_layer_features_have_one_entry_per_layer_and_match_the_model(tiny, tokenizer):
    feats = layer_features(tiny, tokenizer, TEXTS_A, TEXTS_B, batch_size=3, mixed_precision="no")
    layers = tiny.config.num_hidden_layers + 1
    assert set(feats) == {"cls", "mean"}
    assert feats["cls"].shape == feats["mean"].shape == (layers, 4, 128)
    assert tiny.training  # the mode it found is restored
    tiny.eval()
    with torch.no_grad():
        enc = tokenizer(TEXTS_A[1], TEXTS_B[1], return_tensors="pt")
        states = tiny.bert(**enc, output_hidden_states=True).hidden_states
    tiny.train()
    for layer in range(layers):
        np.testing.assert_allclose(feats["cls"][layer, 1], states[layer][0, 0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(feats["mean"][layer, 1], states[layer][0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    single = layer_features(tiny, tokenizer, TEXTS_A, mixed_precision="no")  # each text alone
    assert single["mean"].shape == (layers, 4, 128)
    assert not np.allclose(single["mean"][-1], feats["mean"][-1])
    with pytest.raises(DataError, match="same pairs"):
        layer_features(tiny, tokenizer, TEXTS_A, TEXTS_B[:2])


def test_cached_features_equal_a_fresh_extraction_and_skip_the_model(tiny, tokenizer, tmp_path):
    fresh = layer_features(tiny, tokenizer, TEXTS_A, TEXTS_B, mixed_precision="no")
    first, hit1 = cached_features(tiny, tokenizer, TEXTS_A, TEXTS_B, mixed_precision="no", cache_dir=tmp_path)
    assert not hit1 and len(list(tmp_path.glob("*.npz"))) == 1
    calls = []
    handle = tiny.bert.register_forward_hook(lambda *args: calls.append(1))
    try:
        second, hit2 = cached_features(tiny, tokenizer, TEXTS_A, TEXTS_B, mixed_precision="no", cache_dir=tmp_path)
    finally:
        handle.remove()
    assert hit2 and calls == []  # read from disk: the model did not run
    for pooling in ("cls", "mean"):
        np.testing.assert_array_equal(first[pooling], fresh[pooling])
        np.testing.assert_array_equal(second[pooling], fresh[pooling])
    # Anything the features depend on changes the key: other texts, other weights, other length.
    _, hit = cached_features(tiny, tokenizer, TEXTS_A, None, mixed_precision="no", cache_dir=tmp_path)
    assert not hit
    other = load_model("tiny-bert", 2, seed=1)
    _, hit = cached_features(other, tokenizer, TEXTS_A, TEXTS_B, mixed_precision="no", cache_dir=tmp_path)
    assert not hit
    _, hit = cached_features(tiny, tokenizer, TEXTS_A, TEXTS_B, max_length=8, mixed_precision="no", cache_dir=tmp_path)
    assert not hit
    assert len(list(tmp_path.glob("*.npz"))) == 4


def _padded(ids: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    padded = torch.nn.functional.pad(ids, (0, extra), value=0)  # (B, T + extra)
    mask = torch.zeros_like(padded)
    mask[:, : ids.shape[1]] = 1
    return padded, mask


@pytest.mark.parametrize("kind", ["cnn", "bigru"])
def test_padding_does_not_change_a_sentence_vector(kind, tokenizer):
    torch.manual_seed(0)
    emb = random_embeddings(len(tokenizer), 16, seed=0)
    encoder = (CNNEncoder(emb, widths=(2, 3), filters=5) if kind == "cnn" else BiGRUEncoder(emb, hidden=6)).eval()
    with torch.no_grad():
        for text in ("hi", "a much longer sentence with many tokens in it."):  # shorter and longer than the widths
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
            alone = encoder(ids, torch.ones_like(ids))
            for extra in (1, 9):
                torch.testing.assert_close(encoder(*_padded(ids, extra)), alone, rtol=1e-5, atol=1e-6)
        # and in a batch with other sentences, each row equals its own sentence encoded alone
        enc = tokenizer(TEXTS_A, add_special_tokens=False, padding=True, return_tensors="pt")
        batch = encoder(enc["input_ids"], enc["attention_mask"])
        assert batch.shape == (4, encoder.output_dim)
        for i, text in enumerate(TEXTS_A):
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            torch.testing.assert_close(batch[i], encoder(ids, torch.ones_like(ids))[0], rtol=1e-5, atol=1e-6)


def test_cnn_masking_matters():
    """Without the mask the padding would change the vector: the test above can fail."""
    torch.manual_seed(0)
    encoder = CNNEncoder(random_embeddings(50, 8, seed=0), widths=(3,), filters=4).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0, 0]])
    with torch.no_grad():
        masked = encoder(ids, torch.tensor([[1, 1, 1, 0, 0, 0]]))
        unmasked = encoder(ids, torch.ones_like(ids))
    assert not torch.allclose(masked, unmasked)


def test_static_embeddings_are_a_frozen_copy(tiny):
    emb = static_embeddings(tiny, standardize=False)
    assert not emb.weight.requires_grad
    torch.testing.assert_close(emb.weight, tiny.get_input_embeddings().weight)
    assert emb.weight.data_ptr() != tiny.get_input_embeddings().weight.data_ptr()
    scaled = static_embeddings(tiny).weight  # standardised per dimension
    torch.testing.assert_close(scaled.mean(0), torch.zeros(scaled.shape[1]), rtol=0, atol=1e-4)
    torch.testing.assert_close(scaled.std(0), torch.ones(scaled.shape[1]), rtol=0, atol=1e-4)
    assert static_embeddings(tiny, freeze=False).weight.requires_grad


def test_training_vocabulary_maps_unseen_tokens_to_unknown(tokenizer):
    pairs = tokenize_pairs(tokenizer, TEXTS_A, TEXTS_B)
    mapping = training_vocabulary(pairs, len(tokenizer))
    seen = torch.unique(torch.cat([pairs["input_ids_a"][pairs["attention_mask_a"].bool()],
                                   pairs["input_ids_b"][pairs["attention_mask_b"].bool()]]))
    assert int(mapping.max()) == len(seen) and (mapping[seen] > 0).all()
    assert sorted(mapping[seen].tolist()) == list(range(1, len(seen) + 1))
    other = apply_vocabulary(tokenize_pairs(tokenizer, ["zebra quantum"], ["prices rose."]), mapping)
    assert (other["input_ids_a"] == 0).all()  # never seen in training
    assert (other["input_ids_b"] > 0).all()  # "prices rose." was


def _toy_pairs(tokenizer, n: int = 24):
    texts_a = [TEXTS_A[i % 4] for i in range(n)]
    texts_b = [TEXTS_B[(i + (i % 2)) % 4] for i in range(n)]  # odd rows: mismatched pairs
    labels = torch.tensor([1 - i % 2 for i in range(n)])
    return tokenize_pairs(tokenizer, texts_a, texts_b), labels


def test_train_classifier_is_deterministic_under_a_seed_and_learns(tokenizer):
    inputs, labels = _toy_pairs(tokenizer)
    vocabulary = training_vocabulary(inputs, len(tokenizer))
    inputs = apply_vocabulary(inputs, vocabulary)

    def run(seed: int):
        torch.manual_seed(0)
        model = SiamesePairClassifier(CNNEncoder(random_embeddings(int(vocabulary.max()) + 1, 8, seed=0), filters=4),
                                      hidden=8, dropout=0.3)
        return train_classifier(model, inputs, labels, eval_inputs=inputs, eval_labels=labels, epochs=15,
                                batch_size=8, learning_rate=1e-2, seed=seed)

    (m1, h1), (m2, h2), (_, h3) = run(0), run(0), run(1)
    assert h1 == h2
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    assert h1 != h3  # another seed shuffles (and drops) differently
    assert [h["epoch"] for h in h1] == list(range(1, 16))
    assert h1[-1]["train_accuracy"] == 1.0  # 4 distinct pairs, memorised
    assert h1[-1]["train_loss"] < h1[0]["train_loss"]
    assert not m1.training


def test_mlp_probe_and_linear_probe_are_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int)
    p1, p2 = fit_probe(x, y, C=1.0), fit_probe(x, y, C=1.0)
    np.testing.assert_array_equal(p1.predict_proba(x), p2.predict_proba(x))
    assert p1.score(x, y) > 0.9
    with pytest.raises(ConfigError, match="one layer"):
        fit_probe(np.stack([x, x]), y)
    chosen = fit_probe(x, y, C=(1e-3, 1.0, 100.0))  # chosen by cross-validation, refitted on all of x
    assert chosen[-1].C in (1e-3, 1.0, 100.0) and 0.0 <= chosen.score(x, y) <= 1.0
    assert chosen[-1].C > 1e-3  # the strongest penalty cannot separate this easy problem as well
    with pytest.raises(DataError, match="2 examples of every class"):
        fit_probe(x[:3], np.array([0, 1, 1]), C=(0.1, 1.0))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        probe = MLPProbe(6, hidden=8, dropout=0.5)
        runs.append(train_classifier(probe, {"features": torch.tensor(x)}, torch.tensor(y), epochs=5,
                                     batch_size=8, weight_decay=1.0, seed=3)[1])
    assert runs[0] == runs[1]


def test_probe_chooses_C_by_cross_validation_on_its_training_data_only():
    """The probe's choice of C cannot see an evaluation split: its only data arguments are the
    training features and labels, and the C it picks is the one that wins stratified k-fold
    cross-validation on those alone."""
    import inspect

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    for fn in (fit_probe, choose_probe_C):
        assert list(inspect.signature(fn).parameters) == ["x", "y", "C", "folds", "max_iter"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6))
    y = (x[:, 0] + rng.normal(size=80) > 0).astype(int)
    grid = (1e-3, 1e-1, 1.0, 100.0)
    chosen, scores = choose_probe_C(x, y, C=grid)
    assert set(scores) == set(grid)
    xs = StandardScaler().fit_transform(x)  # features only; the folds' labels stay held out
    for C in grid:  # the same held-out-fold log-likelihood, recomputed by hand
        folds = [-log_loss(y[te], LogisticRegression(C=C, max_iter=2000).fit(xs[tr], y[tr]).predict_proba(xs[te]))
                 for tr, te in StratifiedKFold(5).split(xs, y)]
        assert scores[C] == pytest.approx(np.mean(folds), abs=1e-4)
    assert chosen == max(grid, key=lambda c: scores[c]) and fit_probe(x, y, C=grid)[-1].C == chosen
    # labels that are pure noise: every fold says "penalise as much as you can"
    noise_x, noise_y = rng.normal(size=(60, 40)), np.tile([0, 1], 30)
    assert choose_probe_C(noise_x, noise_y, C=grid)[0] == min(grid)


def test_weight_decay_shrinks_weights():
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    norms = []
    for decay in (0.0, 10.0):
        torch.manual_seed(0)
        probe = MLPProbe(4, hidden=8)
        train_classifier(probe, {"features": x}, y, epochs=10, batch_size=8, weight_decay=decay, seed=0)
        norms.append(float(probe.net[1].weight.detach().norm()))
    assert norms[1] < 0.8 * norms[0]


def test_bad_input_names_the_fix(tokenizer):
    with pytest.raises(DataError, match="no tokens"):
        tokenize_pairs(tokenizer, ["fine.", ""], ["ok.", "ok."])
    with pytest.raises(DataError, match="N rows"):
        train_classifier(MLPProbe(2), {"features": torch.zeros(3, 2)}, torch.zeros(2, dtype=torch.long))


def test_train_classifier_scores_three_classes_with_macro_f1():
    """Binary F1 is undefined for three classes (sklearn raises); the macro average is used."""
    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.layer(x)

    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = torch.arange(60) % 3
    x[torch.arange(60), y] += 3.0  # separable: class c is large in feature c
    _, history = train_classifier(Linear(), {"x": x}, y, eval_inputs={"x": x}, eval_labels=y, epochs=30,
                                  learning_rate=0.05)
    assert history[-1]["eval_f1"] > 0.9 and history[-1]["eval_accuracy"] > 0.9

"""tlutils: the library every chapter of *Transfer Learning for NLP* imports.

Modules are named by concept: :mod:`tlutils.config` (profiles, seeding, device),
:mod:`tlutils.data` (tasks, loading, tokenization, batching), :mod:`tlutils.models`
(encoders and heads), :mod:`tlutils.core` (per-architecture layer maps), :mod:`tlutils.train`
(the ``fit`` engine), :mod:`tlutils.metrics`, :mod:`tlutils.stats` (paired comparisons and their
verdicts), :mod:`tlutils.plotting` and :mod:`tlutils.results` (results files and records).
Importing the package has no side effects.
"""

__version__ = "0.1.0"

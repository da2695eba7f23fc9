"""Transfer-learning methods, one module per method: pure functions and small classes."""

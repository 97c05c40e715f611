"""cxrdet's test suite (a regular package, so that `tests.helpers` is ours even where an installed distribution
ships a top-level `tests` package, as iterative-stratification does)."""

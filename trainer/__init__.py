"""Flow-DPPO trainer: the algorithm of spec/algorithm.md as a library. Knows nothing of HTTP, Celery or SQL."""

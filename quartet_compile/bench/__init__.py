"""A/B benchmarking of compiled training steps (``quartet-bench``); see :mod:`.cli`."""

"""The benchmarking tool of quartet-compile: ``quartet-bench`` (A/B training comparisons), the
demo behind ``python -m quartet_compile``, the numerics tour, and the studies under
:mod:`quartet_bench.studies` whose results live in ``bench/results/``. Users of the backend never
import it."""

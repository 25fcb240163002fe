"""``python -m quartet_compile``: the main job, the A/B training demo of :mod:`quartet_bench.demo`."""

from quartet_bench.demo import main

main()

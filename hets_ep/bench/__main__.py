"""``python -m hets_ep.bench``: the benchmark's measurements in fresh processes."""

from hets_ep.bench import main

main()

"""Benchmark (same as `hets-ep bench`): python scripts/bench.py [--quick] [--out FILE]."""

from hets_ep.bench import main

if __name__ == "__main__":
    main()

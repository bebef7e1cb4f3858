#!/usr/bin/env python
"""Same CLI as the installed ``irpe-bench`` script."""
import sys

from irpe_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

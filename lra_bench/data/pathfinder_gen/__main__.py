"""`python -m lra_bench.data.pathfinder_gen`: generate a release folder (see `release.main`)."""

import sys

from lra_bench.data.pathfinder_gen.release import main

# argparse names the program after argv[0]: keep the name usage and errors gave when the
# generator was the one module pathfinder_gen.py
sys.argv[0] = "pathfinder_gen.py"
main()

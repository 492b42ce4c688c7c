"""`python -m codeparrot.train ...` (what `accelerate launch -m codeparrot.train` runs): `codeparrot train`."""

import sys

from codeparrot.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

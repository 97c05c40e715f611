"""`python -m cxrdet ...`: the command line, for environments without the `cxrdet` script on PATH (a notebook)."""

from cxrdet.cli import main

main()

"""`python -m clq` is `clq-run`."""

from clq.run import main

main()

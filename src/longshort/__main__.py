"""`python -m longshort ...` is the `longshort` command (torchrun launches it this way: `torchrun ... -m longshort train`)."""

import sys

from longshort.cli import main

sys.exit(main())

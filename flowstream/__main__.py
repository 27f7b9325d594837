"""`python -m flowstream` is the `flowstream` command."""

import sys

from flowstream.cli import main

sys.exit(main())

"""`python -m toolkit` runs the `lab` CLI."""

from toolkit.cli import main

raise SystemExit(main())

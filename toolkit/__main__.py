"""`python -m toolkit` runs the `lab` CLI."""

from toolkit.cli.app import main

raise SystemExit(main())

"""`python -m gnut` is the `gnut` command."""

from gnut.cli import main

raise SystemExit(main())

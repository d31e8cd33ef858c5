"""`python -m gnut` is the `gnut` command."""

from gnut.app.cli import main

raise SystemExit(main())

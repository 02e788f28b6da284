"""`python -m nebula` is the same as the `nebula` command."""

from __future__ import annotations

from nebula.cli import main

main()

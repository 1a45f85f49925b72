"""`python -m proxy` runs the `llm-proxy` command line."""

from proxy.cli import main

raise SystemExit(main())

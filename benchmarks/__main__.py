"""Entry point: ``python -m benchmarks [--duration S] [--warmup S] [--rounds N]``."""

from __future__ import annotations

from benchmarks._runner import main

raise SystemExit(main())

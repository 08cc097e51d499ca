from __future__ import annotations

from memoryd.cli import main

main()

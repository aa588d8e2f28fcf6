"""A job module that imports once, then breaks: a deploy that went wrong under running workers.

`liteq work` imports it once to check it before forking workers; every later import (each
worker's start-up) raises. CRASHING_COUNT names the file that counts imports.
"""

import os
from pathlib import Path

_count = Path(os.environ["CRASHING_COUNT"])
_imports = len(_count.read_text()) if _count.exists() else 0
with _count.open("a") as f:
    f.write("x")
if _imports > 0:
    raise RuntimeError("this module is broken on purpose")

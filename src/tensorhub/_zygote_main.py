"""Entry point of the fork-server helper (kept apart so ``-m`` does not re-import a loaded module)."""

import sys

from tensorhub.zygote import serve

serve(int(sys.argv[1]))

"""Entry point of the fork-server guardian and helper (kept apart so ``-m`` does not re-import a
loaded module): the guardian forks the helper, see :mod:`tensorhub.zygote`."""

import sys

from tensorhub.zygote import guard

guard(int(sys.argv[1]))

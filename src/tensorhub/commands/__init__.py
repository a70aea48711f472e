"""The commands of ``tensorhub`` (the group itself is :mod:`tensorhub.cli`), one module per job:
:mod:`~tensorhub.commands.records` (``ls``, ``show``, ``rm``), :mod:`~tensorhub.commands.queue`
(``cancel``, ``requeue``, ``worker``), :mod:`~tensorhub.commands.plot` (``plot``), and
:mod:`~tensorhub.commands.common` (the shared options, the one default rule for ``--uri``/``--project``,
queries, JSON output). They import nothing of the group, which imports them.
"""

"""``python -m tensorhub`` runs the command-line tool."""

from tensorhub.cli import main

main()

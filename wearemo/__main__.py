"""``python -m wearemo`` runs the CLI."""

from wearemo.cli import main

main()

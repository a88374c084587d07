"""`python -m matryoshka` = the `matryoshka` command."""

from matryoshka.cli import app

app()

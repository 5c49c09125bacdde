"""`python -m unbackdoor`, the same as the `unbackdoor` command."""

from .cli import main

main()

"""`python -m edge_lorax ...` is the `edge-lorax` command."""

from edge_lorax.cli import main

if __name__ == "__main__":
    main()

"""lab: a personal GPU research lab, up and down with one command."""

__version__ = "0.1.0"

"""Command-line front ends, one module per `cacxr` command."""

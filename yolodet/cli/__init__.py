"""The ``yolodet`` command: argument parsing, printing, downloading weights -- the only place with side effects.

Each subcommand module turns its arguments into a library config and calls the library; :mod:`.main` holds the
subcommand table and the error boundary. Importing this package does not import torch (so that
:mod:`.openmp` can still set OpenMP's defaults)."""

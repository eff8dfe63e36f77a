#!/bin/sh
# /usr/bin/dewy: dewy runs from its private virtualenv with the distribution's python3
# (the minor version the package was built for).
# -I (isolated): neither the working directory (dewy@NAME runs in /var/lib/dewy/NAME, among
# deployed releases) nor PYTHON* environment variables can change what dewy imports.
exec /usr/lib/dewy/venv/bin/python3 -I -m dewy "$@"

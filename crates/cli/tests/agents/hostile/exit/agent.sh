#!/bin/sh
# Exits with status 3 at once, after one line on stderr.
echo 'hostile exit: giving up before initialize' >&2
exit 3

#!/bin/sh
# Reads its stdin and never answers; ignores SIGTERM, SIGINT, SIGHUP and the end of its stdin:
# only SIGKILL ends it.
trap '' TERM INT HUP
cat > /dev/null
while :; do sleep 3600; done

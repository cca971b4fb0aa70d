#!/bin/sh
# Writes lines that are not JSON-RPC to stdout, at once and for every line it reads; never a
# valid message.
echo 'hello from garbage: this is not JSON'
printf '{"jsonrpc": "2.0", "id": 0, "result": \n'
printf '\001\002\377\376 binary\n'
while IFS= read -r _line; do
  echo 'garbage: still not JSON'
  echo '[1, 2, 3]'
  echo '"a JSON string, not an object"'
done

#!/usr/bin/env bash
# Regenerate samples/sample.wav: real synthesised speech, 16 kHz mono 16-bit, about 5 s.
# Needs Debian's espeak-ng and sox (apt-get install espeak-ng sox).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp --suffix=.wav)
trap 'rm -f "$tmp"' EXIT
espeak-ng -v en-us -s 175 -w "$tmp" \
  "The tracer runs a real audio clip through the encoder and the language model."
sox "$tmp" -r 16000 -c 1 -b 16 "$here/sample.wav" norm -3
soxi "$here/sample.wav"

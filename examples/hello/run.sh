#!/bin/sh
# Serves the page on 127.0.0.1:8099 (python3's http.server), from the current release.
cd "$(dirname "$0")/public" && exec python3 -m http.server 8099 --bind 127.0.0.1

#!/usr/bin/env bash
# usage: cg.sh BIN "modes" "W:C ..."  -> instructions per request
BIN=$1; MODES=${2:-foreman}; CELLS=${3:-1:1}
tot() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" "$3" "$4" 2>&1 | grep -o 'Collected : [0-9]*' | grep -o '[0-9]*'; }
for m in $MODES; do for cell in $CELLS; do w=${cell%:*}; c=${cell#*:}
  a=$(tot 20000 $w $m $c); b=$(tot 60000 $w $m $c)
  echo "$m W=$w C=$c per_request=$(( (b-a)/40000 ))"
done; done

# Sourced by the device scripts (bench/*_device.sh) after they set OUT and summary:
#   step NAME SECONDS COMMAND...   runs COMMAND with a time limit, output to $OUT/NAME.log, one line in $summary
step() {
  local name="$1" seconds="$2"
  shift 2
  local start=$SECONDS
  timeout -k 15 "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$(date +%T)] $name: rc=$rc in $((SECONDS - start)) s ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))" | tee -a "$summary"
  return $rc
}

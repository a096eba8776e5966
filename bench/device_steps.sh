# Sourced first by the device scripts (bench/*_device.sh):
#   start_phase PREFIX PHASE KNOWN...   exits 2 unless PHASE is one of KNOWN; sets OUT (default /tmp/out) and summary
#                                       ($OUT/summary_PREFIXPHASE.log) and saves what nvidia-smi says of the GPU
#   step NAME SECONDS COMMAND...        runs COMMAND with a time limit, output to $OUT/NAME.log, one line in $summary
#   sage_site MAJOR                     SageAttention MAJOR importable from /tmp/sageMAJOR (installed there from the wheel
#                                       carried in .carry/sageMAJOR/ unless an earlier call on a warm machine left
#                                       it there): prints that folder, or nothing when there is neither
start_phase() {
  local prefix="$1" wanted="$2"
  shift 2
  local known
  for known in "$@"; do
    if [ "$wanted" = "$known" ]; then
      OUT="${OUT:-/tmp/out}"
      mkdir -p "$OUT"
      summary="$OUT/summary_$prefix$wanted.log"
      nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,memory.total --format=csv > "$OUT/nvidia_smi.txt" 2>&1
      return 0
    fi
  done
  local IFS=,
  echo "unknown phase $wanted ($*)" | sed 's/,/, /g' >&2
  exit 2
}

step() {
  local name="$1" seconds="$2"
  shift 2
  local start=$SECONDS
  timeout -k 15 "$seconds" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[$(date +%T)] $name: rc=$rc in $((SECONDS - start)) s ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))" | tee -a "$summary"
  return $rc
}

sage_site() {
  local site="/tmp/sage$1" wheels=(.carry/sage"$1"/*.whl)
  if [ ! -d "$site/sageattention" ] && [ -f "${wheels[0]}" ]; then
    python3 -m pip install -q --no-deps --target "$site" "${wheels[@]}" >/dev/null 2>&1
  fi
  if [ -d "$site/sageattention" ]; then echo "$site"; fi
}

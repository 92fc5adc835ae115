# Sourced by the study scripts: `seeds A B` (A,…,B) and `sweep DIR ARGS…` (one Hydra multirun into
# DIR with the caller's `extra` overrides; an existing one is continued with resume=true).
seeds() { seq -s, "$1" "$2"; }
sweep() {
  local dir=$1; shift
  local resume=()
  [ -d "$dir" ] && resume=(resume=true)
  hets-ep train -m "${extra[@]}" "hydra.sweep.dir=$dir" "${resume[@]}" "$@"
}

# shellcheck shell=bash
# Sourced by the recording stand-ins in this directory; see ../README.md.
#
# standin_record TOOL ARGS...  appends one JSON line to $ZDT_RECORD_FILE (when set):
#   {"tool":"kubeadm","argv":["join","--config","/etc/kubeadm/join.yaml"],"stdin":"","cwd":"/","ts":"2026-01-01T00:00:00.000Z"}
# standin_reply TOOL           prints $ZDT_STANDIN_<TOOL>_STDOUT and _STDERR (as given, no newline
#                              added) and exits with $ZDT_STANDIN_<TOOL>_EXIT (default 0).
# <TOOL> is the tool's name in capitals with '-' as '_': rc-service -> ZDT_STANDIN_RC_SERVICE_EXIT.

json_string() {
  local s=$1 out='' c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  if [[ $s =~ [[:cntrl:]] ]]; then # other control characters are rare: escape them one by one
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      [[ $c =~ [[:cntrl:]] ]] && printf -v c '\\u%04x' "'$c"
      out+=$c
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

standin_record() {
  local tool=$1 stdin='' argv='' a
  shift
  # Read only what is there: stdin may be a terminal, or a pipe the caller never writes to
  # nor closes. NUL bytes cannot be kept in a shell variable and are dropped.
  if [[ ! -t 0 ]]; then
    IFS= read -r -d '' -t "${ZDT_STANDIN_STDIN_TIMEOUT:-0.25}" stdin || true
  fi
  [[ -n ${ZDT_RECORD_FILE:-} ]] || return 0
  for a in "$@"; do argv+="${argv:+,}$(json_string "$a")"; done
  printf '{"tool":%s,"argv":[%s],"stdin":%s,"cwd":%s,"ts":"%s"}\n' \
    "$(json_string "$tool")" "$argv" "$(json_string "$stdin")" "$(json_string "$PWD")" \
    "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" >>"$ZDT_RECORD_FILE"
}

standin_reply() {
  local prefix=ZDT_STANDIN_${1^^}
  prefix=${prefix//-/_}
  local out=${prefix}_STDOUT err=${prefix}_STDERR code=${prefix}_EXIT
  [[ -z ${!out:-} ]] || printf '%s' "${!out}"
  [[ -z ${!err:-} ]] || printf '%s' "${!err}" >&2
  exit "${!code:-0}"
}

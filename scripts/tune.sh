#!/usr/bin/env bash
# Kernel tuning for corecast: compare this machine with
# tuning/sysctl.d/60-corecast.conf (the single source of the recommended
# values), show what would change, change it. See docs/TUNING.md.
#
#   scripts/tune.sh --check              table of current vs recommended; exit 1 if any is off
#   scripts/tune.sh --dry-run [--install] print the exact commands --apply would run
#   scripts/tune.sh --apply [--install]  as root: sysctl -w each value that is off;
#                                        --install also copies the file to /etc/sysctl.d/
set -uo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
conf="$root/tuning/sysctl.d/60-corecast.conf"
limits_conf="$root/tuning/limits.d/corecast.conf"
unit_file="$root/tuning/systemd/corecast.service"
dest=/etc/sysctl.d/60-corecast.conf
# Where sysctl keys are read from (overridable only to test this script).
proc_sys=${TUNE_PROC_SYS:-/proc/sys}

usage() {
    cat <<EOF
Usage: ${0##*/} --check | --dry-run [--install] | --apply [--install] [--conf FILE]

Compares the kernel settings of this machine with the recommendations in
  $conf
(the values there assume a 64 GiB host; see its header and docs/TUNING.md).

  --check      Print each setting: current value, recommended value, the
               rule, and OK / LOW / HIGH / DIFF; also this shell's open-file
               limits. Keys that do not exist here (nf_conntrack not loaded)
               show "n/a" and are not counted.
  --dry-run    Print the exact commands --apply would run (no root needed).
  --apply      As root: for every setting that is off, run sysctl -w with a
               value that meets the recommendation without lowering anything
               that is already better (e.g. a larger fs.file-max is kept).
               Keys that do not exist here are skipped with a warning.
  --install    With --apply (or --dry-run): also install the file as
               $dest, so the exact values are set at every boot.
  --conf FILE  Use another copy of the file (e.g. one scaled to this host).
  -h, --help   This text.

Rules: ">=" a minimum (LOW when below), "<=" a maximum (HIGH when above),
"=" an exact value (DIFF), "covers" a range that must include the
recommended one; triples are compared element by element.

Exit status: 0 all OK (or everything applied); 1 --check found a setting
that is off, or --apply could not write an existing key; 2 usage error
(bad arguments, unreadable file, --apply without root).
EOF
}

die_usage() {
    printf '%s: %s\n' "${0##*/}" "$1" >&2
    printf 'Try %s --help\n' "${0##*/}" >&2
    exit 2
}

warn() { printf 'warning: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------
# Arguments

mode=""
install=0
set_mode() {
    [ -z "$mode" ] || die_usage "choose one of --check, --dry-run, --apply"
    mode=$1
}
while [ $# -gt 0 ]; do
    case $1 in
        --check) set_mode check ;;
        --dry-run) set_mode dry-run ;;
        --apply) set_mode apply ;;
        --install) install=1 ;;
        --conf)
            [ $# -ge 2 ] || die_usage "--conf needs a file"
            conf=$2
            shift
            ;;
        --conf=*) conf=${1#--conf=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die_usage "unknown argument: $1" ;;
    esac
    shift
done
[ -n "$mode" ] || die_usage "choose one of --check, --dry-run, --apply"
if [ "$install" = 1 ] && [ "$mode" = check ]; then
    die_usage "--install goes with --apply or --dry-run"
fi
[ -r "$conf" ] || die_usage "cannot read $conf"

# ---------------------------------------------------------------------------
# The sysctl.d file: "key = value" lines; "#" or ";" comments; a leading
# "-" marks a key that may be missing; "/" may separate key components.

keys=()
vals=()
while IFS= read -r line || [ -n "$line" ]; do
    line=${line#"${line%%[![:space:]]*}"}
    case $line in '' | '#'* | ';'*) continue ;; esac
    case $line in *=*) ;; *) die_usage "$conf: not a 'key = value' line: $line" ;; esac
    key=${line%%=*}
    key=${key%"${key##*[![:space:]]}"}
    key=${key#-}
    key=${key//\//.}
    read -r -a words <<<"${line#*=}"
    [ ${#words[@]} -gt 0 ] || die_usage "$conf: no value for $key"
    keys+=("$key")
    vals+=("${words[*]}")
done <"$conf"
[ ${#keys[@]} -gt 0 ] || die_usage "$conf: no settings found"

# ---------------------------------------------------------------------------
# Comparing

# How each key is judged; anything not listed is a minimum (per element).
rule_of() {
    case $1 in
        net.ipv4.ip_local_port_range) echo covers ;;
        # min: guaranteed per socket under pressure; default and max: per-socket caps
        net.ipv4.tcp_rmem | net.ipv4.tcp_wmem) echo ">= <= <=" ;;
        net.ipv4.tcp_fin_timeout) echo "<=" ;;
        net.ipv4.tcp_tw_reuse | net.ipv4.tcp_syncookies) echo "=" ;;
        *) echo ">=" ;;
    esac
}

is_num() { [[ $1 =~ ^[0-9]+$ ]]; }

# num_cmp A B: prints -1, 0 or 1; any length (fs.file-max may be 2^63-1).
num_cmp() {
    local a=$1 b=$2
    a=${a#"${a%%[!0]*}"}
    b=${b#"${b%%[!0]*}"}
    if [ ${#a} -ne ${#b} ]; then
        [ ${#a} -lt ${#b} ] && echo -1 || echo 1
    elif [[ $a < $b ]]; then
        echo -1
    elif [[ $a > $b ]]; then
        echo 1
    else
        echo 0
    fi
}

# judge CURRENT RECOMMENDED RULE: sets status (OK, LOW, HIGH, DIFF, joined
# with "+", or "?" when not comparable) and target: the nearest value that
# meets the recommendation without making any element worse.
status=""
target=""
judge() {
    local -a c r ops t=()
    local i n op cmp low=0 high=0 diff=0
    read -r -a c <<<"$1"
    read -r -a r <<<"$2"
    read -r -a ops <<<"$3"
    target=$2
    if [ ${#c[@]} -ne ${#r[@]} ]; then
        status="?"
        return
    fi
    n=${#r[@]}
    for ((i = 0; i < n; i++)); do
        if ! is_num "${c[i]}" || ! is_num "${r[i]}"; then
            status="?"
            return
        fi
    done
    if [ "$3" = covers ]; then
        # a range [lo, hi]: the current one must include the recommended one
        if [ "$n" -ne 2 ]; then
            status="?"
            return
        fi
        t=("${c[0]}" "${c[1]}")
        [ "$(num_cmp "${c[0]}" "${r[0]}")" = 1 ] && { t[0]=${r[0]}; low=1; }
        [ "$(num_cmp "${c[1]}" "${r[1]}")" = -1 ] && { t[1]=${r[1]}; low=1; }
    else
        for ((i = 0; i < n; i++)); do
            op=${ops[i]:-${ops[0]}}
            cmp=$(num_cmp "${c[i]}" "${r[i]}")
            t[i]=${c[i]}
            case $op in
                ">=") [ "$cmp" = -1 ] && { t[i]=${r[i]}; low=1; } ;;
                "<=") [ "$cmp" = 1 ] && { t[i]=${r[i]}; high=1; } ;;
                "=") [ "$cmp" = 0 ] || { t[i]=${r[i]}; diff=1; } ;;
            esac
        done
    fi
    target="${t[*]}"
    status=""
    [ $low = 1 ] && status+="+LOW"
    [ $high = 1 ] && status+="+HIGH"
    [ $diff = 1 ] && status+="+DIFF"
    status=${status#+}
    [ -n "$status" ] || status=OK
}

# current KEY: prints the value with whitespace collapsed; fails if absent.
current() {
    local path="$proc_sys/${1//.//}" v=""
    local -a w
    [ -r "$path" ] || return 1
    IFS= read -r v <"$path" 2>/dev/null || [ -n "$v" ] || return 1
    read -r -a w <<<"$v"
    printf '%s\n' "${w[*]}"
}

missing_reason() {
    if [ -e "$proc_sys/${1//.//}" ]; then
        echo "n/a (not readable by this user)"
        return
    fi
    case $1 in
        net.netfilter.*) echo "n/a (module not loaded)" ;;
        *) echo "n/a (no such key here)" ;;
    esac
}

# shell-quote a command for printing (values with spaces get single quotes)
show_cmd() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then
            out+=" $a"
        else
            out+=" '${a//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "${out# }"
}

gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }

# ---------------------------------------------------------------------------
# --check

# first "nofile" value of the given type in the limits.d file
limits_nofile() {
    [ -r "$limits_conf" ] || return 1
    awk -v t="$1" '$1 !~ /^#/ && $2 == t && $3 == "nofile" { print $4; exit }' "$limits_conf"
}

unit_nofile() {
    [ -r "$unit_file" ] || return 1
    sed -n 's/^LimitNOFILE=\([0-9][0-9]*\).*/\1/p' "$unit_file" | head -n 1
}

do_check() {
    local i key rec cur rule bad=0 ok=0 na=0 kw=26 vw=11 fmt
    local -a curs=()
    for i in "${!keys[@]}"; do
        curs[i]=$(current "${keys[i]}") || curs[i]="-"
        [ "${#keys[i]}" -gt "$kw" ] && kw=${#keys[i]}
        [ "${#curs[i]}" -gt "$vw" ] && vw=${#curs[i]}
        [ "${#vals[i]}" -gt "$vw" ] && vw=${#vals[i]}
    done
    fmt="%-$((kw + 1))s %-$((vw + 1))s %-$((vw + 1))s %-9s %s\n"
    echo "Recommended values: $conf"
    echo
    # shellcheck disable=SC2059 # the format is built above
    printf "$fmt" SETTING CURRENT RECOMMENDED RULE STATUS
    for i in "${!keys[@]}"; do
        key=${keys[i]}
        rec=${vals[i]}
        rule=$(rule_of "$key")
        cur=${curs[i]}
        if [ "$cur" = "-" ]; then
            # shellcheck disable=SC2059
            printf "$fmt" "$key" "-" "$rec" "$rule" "$(missing_reason "$key")"
            na=$((na + 1))
            continue
        fi
        judge "$cur" "$rec" "$rule"
        # shellcheck disable=SC2059
        printf "$fmt" "$key" "$cur" "$rec" "$rule" "$status"
        if [ "$status" = OK ]; then ok=$((ok + 1)); else bad=$((bad + 1)); fi
    done

    # open-file limits
    local soft hard want unit_n nr_open s
    soft=$(ulimit -Sn)
    hard=$(ulimit -Hn)
    want=$(limits_nofile hard) || want=""
    unit_n=$(unit_nofile) || unit_n=""
    echo
    echo "Open-file limits (informational, not counted in the exit status: a"
    echo "systemd service gets LimitNOFILE= from its unit, a login gets limits.d):"
    # shellcheck disable=SC2059
    printf "$fmt" LIMIT CURRENT RECOMMENDED RULE STATUS
    for s in "soft:$soft" "hard:$hard"; do
        local v=${s#*:} st="-"
        if [ -n "$want" ]; then
            if [ "$v" = unlimited ]; then
                st=OK
            else
                judge "$v" "$want" ">="
                st=$status
            fi
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "ulimit -n ${s%%:*} (this shell)" "$v" "${want:--}" ">=" "$st"
    done
    nr_open=$(current fs.nr_open) || nr_open=""
    if [ -n "$unit_n" ] && [ -n "$nr_open" ]; then
        judge "$nr_open" "$unit_n" ">="
        # shellcheck disable=SC2059
        printf "$fmt" "fs.nr_open vs LimitNOFILE" "$nr_open" "$unit_n" ">=" \
            "$([ "$status" = OK ] && echo OK || echo "LOW: systemd cannot start corecast.service")"
    fi
    if [ -n "$want" ] && [ "$hard" != unlimited ] && [ -n "$nr_open" ]; then
        [ "$(num_cmp "$hard" "$nr_open")" = 1 ] && warn "this shell's hard limit exceeds fs.nr_open"
    fi

    # notes: tcp_mem is in pages; conntrack
    local page mem_kb rec_mem cur_mem
    local -a rm cm
    page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null)
    for i in "${!keys[@]}"; do
        [ "${keys[i]}" = net.ipv4.tcp_mem ] && rec_mem=${vals[i]}
    done
    echo
    echo "Notes:"
    if [ -n "${rec_mem:-}" ]; then
        read -r -a rm <<<"$rec_mem"
        printf '  tcp_mem is in pages of %s bytes: recommended %s / %s / %s' "$page" \
            "$(gib $((rm[0] * page)))" "$(gib $((rm[1] * page)))" "$(gib $((rm[2] * page)))"
        if cur_mem=$(current net.ipv4.tcp_mem); then
            read -r -a cm <<<"$cur_mem"
            printf ', current %s / %s / %s' \
                "$(gib $((cm[0] * page)))" "$(gib $((cm[1] * page)))" "$(gib $((cm[2] * page)))"
        fi
        echo
        [ "$page" = 4096 ] || echo "  WARNING: the file assumes 4096-byte pages; divide tcp_mem by $((page / 4096)) on this kernel."
        if [ -n "$mem_kb" ]; then
            local pct=$((rm[2] * page * 100 / 1024 / mem_kb))
            printf '  RAM %s; the recommended tcp_mem maximum is %s%% of it' "$(gib $((mem_kb * 1024)))" "$pct"
            if [ "$pct" -gt 30 ]; then
                printf ' (the file assumes 64 GiB: scale tcp_mem by RAM / 64 GiB for this host)'
            fi
            echo
        fi
    fi
    if cur=$(current net.netfilter.nf_conntrack_count); then
        echo "  nf_conntrack loaded: $cur entries tracked now (0 = no firewall rule uses connection tracking)"
    else
        echo "  nf_conntrack not loaded: if a firewall rule loads it later, run --apply again"
    fi

    echo
    echo "$ok OK, $bad off, $na not present here."
    [ "$bad" -eq 0 ]
}

# ---------------------------------------------------------------------------
# --dry-run and --apply

do_apply() {
    local dry=$1 i key rec cur now rule failed=0 changed=0 kept=0 skipped=0
    local -a cmd
    if [ "$dry" = 0 ]; then
        [ "$(id -u)" = 0 ] || die_usage "--apply needs root (try: sudo $0 --apply)"
        command -v sysctl >/dev/null || die_usage "sysctl not found (procps)"
    else
        echo "# Commands ${0##*/} --apply$([ "$install" = 1 ] && echo " --install") would run here:"
    fi
    for i in "${!keys[@]}"; do
        key=${keys[i]}
        rec=${vals[i]}
        rule=$(rule_of "$key")
        if ! cur=$(current "$key"); then
            if [ "$dry" = 1 ]; then
                echo "# skip $key: $(missing_reason "$key")"
            else
                warn "skip $key: $(missing_reason "$key")"
            fi
            skipped=$((skipped + 1))
            continue
        fi
        judge "$cur" "$rec" "$rule"
        if [ "$status" = OK ]; then
            if [ "$dry" = 1 ]; then
                echo "# keep $key = $cur (meets $rule $rec)"
            else
                echo "keep $key = $cur"
            fi
            kept=$((kept + 1))
            continue
        fi
        if [ "$status" = "?" ]; then
            target=$rec
        fi
        cmd=(sysctl -w "$key=$target")
        if [ "$dry" = 1 ]; then
            show_cmd "${cmd[@]}"
            continue
        fi
        # sysctl's exit status misses some refused writes: read the value back
        "${cmd[@]}" >/dev/null
        now=$(current "$key") || now="?"
        judge "$now" "$rec" "$rule"
        if [ "$status" = OK ]; then
            echo "set  $key = $now (was $cur)"
            changed=$((changed + 1))
        else
            warn "could not set $key: it is $now after writing $target; continuing"
            failed=$((failed + 1))
        fi
    done
    if [ "$install" = 1 ]; then
        cmd=(install -m 0644 "$conf" "$dest")
        if [ "$dry" = 1 ]; then
            show_cmd "${cmd[@]}"
        elif "${cmd[@]}"; then
            echo "installed $dest (applied at every boot by systemd-sysctl or sysctl --system)"
        else
            warn "could not install $dest"
            failed=$((failed + 1))
        fi
    elif [ "$dry" = 1 ]; then
        echo "# (add --install to also install it as $dest)"
    fi
    if [ "$dry" = 0 ]; then
        echo "$changed set, $kept already fine, $skipped not present here, $failed failed."
        [ "$install" = 1 ] || echo "Not installed: the values last until reboot (use --install to keep them)."
    fi
    [ "$failed" -eq 0 ]
}

case $mode in
    check) do_check ;;
    dry-run) do_apply 1 ;;
    apply) do_apply 0 ;;
esac

#!/bin/sh
# The loop of the OpenRC service zdt-agent-ssh-sync (bastions), which supervise-daemon runs and
# restarts should it die. Installed as /usr/libexec/zdt-agent/ssh-sync-loop.
#
# Runs `zdt-agent ssh-users sync`, then sleeps INTERVAL seconds (the first argument, 30 by
# default), for ever. ssh-keys answers a login from the key cache the sync writes, without
# asking IAM, while the cache is younger than ssh.cacheTtl (60 s by default): the interval plus
# the time a sync takes must stay below cacheTtl, or logins take the slow path to IAM.
#
# Quiet, as it runs 2880 times a day: --log-level warn keeps the agent log to warnings and
# errors, the summary on stdout is dropped, and stderr (those warnings, and the one line a
# failed sync prints) goes to syslog. A sync that finds another one running (an operator's)
# waits for it, up to 30 s, and then exits 0 without doing anything.

: "${zdt_agent:=/usr/bin/zdt-agent}"
interval="${1:-30}"

while :; do
	{ "$zdt_agent" ssh-users sync --log-level warn >/dev/null; } 2>&1 | logger -t zdt-agent-ssh-sync -p daemon.warning
	sleep "$interval"
done

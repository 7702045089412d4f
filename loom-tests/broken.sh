#!/usr/bin/env bash
# Builds each deliberately broken variant of a protocol (cfg shardstone_broken) and
# checks that its loom model fails. A model that cannot fail proves nothing.
# Usage: loom-tests/broken.sh [variant ...]   (default: all); run from the repo root.
set -uo pipefail
cd "$(dirname "$0")/.."
declare -A MODEL=(
  [validation]="commit racing_commits_on_one_page"
  [keys]="commit increments_on_a_shared_leaf_lose_nothing"
  [visibility]="commit snapshot_sees_whole_commit_or_nothing"
  [pins]="commit reclamation_spares_pinned_versions"
  [interval]="commit interval_reclamation_waits_for_readers"
  [watermark]="feed a_feed_never_sees_a_gap_or_a_reordering"
  [gate]="escalation an_escalated_command_commits_once_and_loses_nothing"
  [group_commit]="group_commit acknowledged_only_after_a_covering_sync"
  [keylock]="escalation a_blocked_commit_waits_for_the_key_and_is_woken"
  [durable]="durable_publish visible_only_once_synced_in_either_order"
  [helping]="durable_publish a_stalled_predecessor_does_not_hold_back_its_successor"
)
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(validation keys visibility pins interval watermark gate group_commit keylock durable helping)
status=0
for v in "${variants[@]}"; do
  read -r file test <<<"${MODEL[$v]}"
  log="target-loom-broken/$v.log"
  mkdir -p target-loom-broken
  if RUSTFLAGS="--cfg loom --cfg shardstone_broken=\"$v\"" LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" \
    cargo test -p shardstone-loom-tests --release --target-dir target-loom-broken \
    --test "$file" -- --exact "$test" >"$log" 2>&1; then
    echo "FAIL: broken variant '$v' was not caught by $file::$test (log: $log)"
    status=1
  else
    if grep -q "panicked at loom-tests/tests/$file.rs\|panicked at src/\|a reclaimed version was reached\|assertion\|deadlock; threads = \|Model exceeded maximum number of branches" "$log"; then
      echo "ok: broken variant '$v' caught by $file::$test: $(grep -m1 -A1 "panicked at" "$log" | tail -1)"
    else
      echo "FAIL: broken variant '$v' failed to build or run, not caught by the model (log: $log)"
      status=1
    fi
  fi
done
exit $status

#!/usr/bin/env bash
# API compatibility of the kino.*.v1 packages against what was RELEASED, not only against
# the previous commit: `buf breaking` (FILE rules, proto/buf.yaml) of the working tree's
# proto/ against proto/ at each commit listed in proto/released-v1.txt (the commit that
# first released each package). A breaking change spread over several commits, or landed
# together with later commits, passes a HEAD~1 check but not this one. Every v1 package
# under proto/kino must be listed. Needs the git history of those commits (a shallow clone
# fails here, saying so).
#
#   integration-tests/api-compat.sh [--repo DIR] [--buf PATH]
#
# --repo: the repository to check (default: this one); --buf: the buf binary (default:
# DIR/.tools/node_modules/.bin/buf, which install-deps.sh installs). Exit status 1 on a
# breaking change or an incomplete list, 2 on bad arguments.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
buf=""
while (($#)); do
  case "$1" in
    --repo) repo="$(cd "$2" && pwd)"; shift 2 ;;
    --buf) buf="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "api-compat.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
buf="${buf:-$repo/.tools/node_modules/.bin/buf}"
case "$buf" in */*) buf="$(cd "$(dirname "$buf")" && pwd)/$(basename "$buf")" ;; esac
[ -x "$buf" ] || { echo "api-compat.sh: no buf at $buf (deploy/local/install-deps.sh installs it)" >&2; exit 1; }
list="$repo/proto/released-v1.txt"
[ -f "$list" ] || { echo "api-compat.sh: $list is missing" >&2; exit 1; }

declare -A released=()
while read -r package commit _; do
  case "$package" in ''|'#'*) continue ;; esac
  [ -n "${commit:-}" ] || { echo "api-compat.sh: $list: $package names no commit" >&2; exit 1; }
  released[$package]=$commit
done <"$list"

# Every v1 package in the tree has its release commit.
status=0
for dir in "$repo"/proto/kino/*/v1; do
  [ -d "$dir" ] || continue
  package="kino.$(basename "$(dirname "$dir")").v1"
  if [ -z "${released[$package]:-}" ]; then
    echo "api-compat.sh: $package has no release commit in proto/released-v1.txt: add the first commit of main that has it" >&2
    status=1
  fi
done
((status == 0)) || exit 1

work="$(mktemp -d /tmp/kino-api-compat.XXXXXX)"
trap 'rm -rf "$work"' EXIT
for commit in $(printf '%s\n' "${released[@]}" | sort -u); do
  if ! git -C "$repo" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "api-compat.sh: release commit $commit is not in this clone (shallow?): run git fetch --unshallow" >&2
    exit 1
  fi
  packages="$(for p in "${!released[@]}"; do if [ "${released[$p]}" = "$commit" ]; then echo "$p"; fi; done | sort | tr '\n' ' ')"
  echo "==> buf breaking against the release of ${packages}(${commit:0:12})"
  mkdir -p "$work/$commit"
  git -C "$repo" archive "$commit" proto | tar -x -C "$work/$commit"
  if ! (cd "$repo/proto" && "$buf" breaking --against "$work/$commit/proto"); then
    echo "api-compat.sh: proto/ breaks the API released at ${commit:0:12} (above). A released v1 changes only compatibly: add fields and RPCs, never renumber, retype or remove; a breaking change needs a v2 package." >&2
    status=1
  fi
done
exit "$status"

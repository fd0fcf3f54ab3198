#!/usr/bin/env bash
# Runs crossmoe's games and algorithms beside OpenSpiel's in one command and prints
# crossmoe / OpenSpiel ratios: random-play steps/s per game, CFR and CFR+ iterations/s on Kuhn
# and Leduc, MCTS simulations/s on Tic-Tac-Toe and Connect Four (results in docs/benchmarks.md).
#
#   bash bench/openspiel_compare.sh OPEN_SPIEL [HANABI_LEARNING_ENVIRONMENT] [SECONDS] [REPEATS]
#
# OPEN_SPIEL is an unpacked OpenSpiel checkout (the folder holding open_spiel/spiel.h);
# HANABI_LEARNING_ENVIRONMENT an unpacked Hanabi Learning Environment (default: the one OpenSpiel's
# own build would fetch into open_spiel/games/hanabi/, else a sibling of OPEN_SPIEL). Neither is
# part of this repository. Only the OpenSpiel sources these rows need are compiled, with the same
# compiler and flags as crossmoe's release build (-O3 -DNDEBUG), against Debian's libabsl-dev,
# into $OPENSPIEL_BUILD_DIR (default: openspiel_build beside OPEN_SPIEL). crossmoe's side is
# build/bench_games, built first by `cmake --build build --target bench_games`.
# SECONDS is the time per measurement (default 1); REPEATS runs both programs that many times,
# alternating, and the table shows the median of the per-run ratios (default 3).
set -euo pipefail

die() { echo "error: $*" >&2; exit 1; }
[[ $# -ge 1 && $# -le 4 ]] || die "usage: bash bench/openspiel_compare.sh OPEN_SPIEL [HANABI_LEARNING_ENVIRONMENT] [SECONDS] [REPEATS]"

repo=$(cd "$(dirname "$0")/.." && pwd)
os_root=$(cd "$1" 2>/dev/null && pwd) || die "OPEN_SPIEL '$1' is not a folder"
[[ -f $os_root/open_spiel/spiel.h ]] || die "OPEN_SPIEL '$1' has no open_spiel/spiel.h (give the folder that holds open_spiel/)"
hle=${2:-}
if [[ -z $hle ]]; then
  for candidate in "$os_root/open_spiel/games/hanabi/hanabi-learning-environment" "$os_root/../hanabi-learning-environment"; do
    [[ -d $candidate ]] && hle=$candidate && break
  done
fi
[[ -n $hle ]] || die "no Hanabi Learning Environment found beside OPEN_SPIEL; give its folder as the second argument"
hle=$(cd "$hle" 2>/dev/null && pwd) || die "HANABI_LEARNING_ENVIRONMENT '$2' is not a folder"
[[ -f $hle/hanabi_learning_environment/hanabi_lib/hanabi_game.h ]] ||
  die "HANABI_LEARNING_ENVIRONMENT '$hle' has no hanabi_learning_environment/hanabi_lib/hanabi_game.h"
seconds=${3:-1}
repeats=${4:-3}
[[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] || die "SECONDS must be a positive number, got '$seconds'"
[[ $repeats =~ ^[1-9][0-9]*$ ]] || die "REPEATS must be a positive integer, got '$repeats'"
[[ -f /usr/include/absl/strings/str_cat.h ]] || die "abseil headers missing: apt-get install libabsl-dev"

build=${OPENSPIEL_BUILD_DIR:-$(dirname "$os_root")/openspiel_build}
mkdir -p "$build/shim/open_spiel/json" "$build/obj"
# OpenSpiel includes abseil and nlohmann-json through its own tree ("open_spiel/abseil-cpp/absl/...",
# "open_spiel/json/include/nlohmann/..."); these links send those paths to Debian's packages
# without touching the checkout.
ln -sfn /usr/include "$build/shim/open_spiel/abseil-cpp"
ln -sfn /usr/include "$build/shim/open_spiel/json/include"

os=$os_root/open_spiel
# Newer abseil takes a reference where Debian's 20220623 takes a pointer (absl::MutexLock); the
# headers that use it are copied into the shim with `&` added, ahead of the checkout on the
# include path (sources here include OpenSpiel's files by their full "open_spiel/..." path).
while read -r header; do
  mkdir -p "$build/shim/open_spiel/$(dirname "$header")"
  sed -E 's/(MutexLock [a-z_]+)\(([a-z_]+)\)/\1(\&\2)/' "$os/$header" > "$build/patched.tmp"
  cmp -s "$build/patched.tmp" "$build/shim/open_spiel/$header" || mv "$build/patched.tmp" "$build/shim/open_spiel/$header"
done < <(cd "$os" && grep -rlE --include='*.h' 'MutexLock [a-z_]+\([a-z_]+\)' . | sed 's|^\./||')
rm -f "$build/patched.tmp"
# OpenSpiel mixes std::optional and absl::optional as one type, which it is in newer abseil;
# Debian's abseil keeps its own optional (ABSL_OPTION_USE_STD_OPTIONAL 0). An options.h ahead of
# Debian's makes absl::optional std::optional in this build; a library function of Debian's
# abseil with an optional in its signature would then fail to link rather than misbehave.
mkdir -p "$build/absl_options/absl/base"
sed 's/^#define ABSL_OPTION_USE_STD_OPTIONAL 0$/#define ABSL_OPTION_USE_STD_OPTIONAL 1/' \
  /usr/include/absl/base/options.h > "$build/patched.tmp"
cmp -s "$build/patched.tmp" "$build/absl_options/absl/base/options.h" || mv "$build/patched.tmp" "$build/absl_options/absl/base/options.h"
rm -f "$build/patched.tmp"
sources=(
  action_view.cc canonical_game_strings.cc game_parameters.cc matrix_game.cc observer.cc policy.cc
  simultaneous_move_game.cc spiel.cc spiel_bots.cc spiel_utils.cc tensor_game.cc
  utils/status.cc utils/usage_logging.cc
  games/tic_tac_toe/tic_tac_toe.cc games/connect_four/connect_four.cc games/kuhn_poker/kuhn_poker.cc
  games/leduc_poker/leduc_poker.cc games/hanabi/hanabi.cc
  algorithms/cfr.cc algorithms/mcts.cc algorithms/tabular_exploitability.cc algorithms/best_response.cc
  algorithms/history_tree.cc algorithms/expected_returns.cc
)
hle_sources=(canonical_encoders hanabi_card hanabi_game hanabi_hand hanabi_history_item hanabi_move
             hanabi_observation hanabi_state util)
cxx=${CXX:-g++}
flags=(-std=c++20 -O3 -DNDEBUG -w -I"$build/absl_options" -I"$build/shim" -I"$os_root" -I"$hle/hanabi_learning_environment")

# A small Makefile so that a second run recompiles nothing; -j2 as the shared machine asks.
{
  printf 'CXX := %s\nFLAGS := %s\n' "$cxx" "${flags[*]}"
  objects=()
  for s in "${sources[@]}"; do
    o=$build/obj/${s//\//_}; o=${o%.cc}.o; objects+=("$o")
    printf '%s: %s\n\t$(CXX) $(FLAGS) -c $< -o $@\n' "$o" "$os/$s"
  done
  for s in "${hle_sources[@]}"; do
    o=$build/obj/hle_$s.o; objects+=("$o")
    printf '%s: %s\n\t$(CXX) $(FLAGS) -c $< -o $@\n' "$o" "$hle/hanabi_learning_environment/hanabi_lib/$s.cc"
  done
  absl_libs=$(pkg-config --libs absl_strings absl_str_format absl_random_random absl_time absl_synchronization \
              absl_flat_hash_map absl_node_hash_map absl_btree)
  printf '%s/openspiel_games_driver: %s %s\n\t$(CXX) $(FLAGS) $^ -o $@ %s\n' \
    "$build" "$repo/bench/openspiel_games_driver.cpp" "${objects[*]}" "$absl_libs"
} > "$build/Makefile"
echo "building OpenSpiel's games and algorithms in $build" >&2
make -s -j2 -f "$build/Makefile" "$build/openspiel_games_driver" >&2
echo "building crossmoe's bench_games" >&2
cmake --build "$repo/build" -j2 --target bench_games >&2

# Both programs print the same rows: "row<TAB>value<TAB>unit".
mkdir -p "$build/runs"
rm -f "$build/runs"/*.tsv
for ((r = 1; r <= repeats; ++r)); do
  echo "run $r of $repeats" >&2
  "$repo/build/bench_games" "$seconds" > "$build/runs/crossmoe_$r.tsv"
  "$build/openspiel_games_driver" "$seconds" > "$build/runs/openspiel_$r.tsv"
done

python3 - "$build/runs" "$repeats" <<'EOF'
import statistics, sys
runs, repeats = sys.argv[1], int(sys.argv[2])
def load(path):
    rows = {}
    for line in open(path):
        name, value, unit = line.rstrip("\n").split("\t")
        rows[name] = (float(value), unit)
    return rows
cm = [load(f"{runs}/crossmoe_{r}.tsv") for r in range(1, repeats + 1)]
os_ = [load(f"{runs}/openspiel_{r}.tsv") for r in range(1, repeats + 1)]
width = max(len(name) for name in cm[0]) + 2
print(f"{'row':<{width}} {'unit':<14} {'crossmoe':>12} {'OpenSpiel':>12} {'ratio (median)':>15} {'(min..max)':>12}")
for name, (_, unit) in cm[0].items():
    ours = statistics.median(c[name][0] for c in cm)
    if name not in os_[0]:
        print(f"{name:<{width}} {unit:<14} {ours:>12.6g} {'-':>12}")
        continue
    theirs = statistics.median(o[name][0] for o in os_)
    if unit == "check":  # a result both sides must reach, not a speed
        same = all(abs(c[name][0] - o[name][0]) <= 1e-9 * max(1.0, abs(o[name][0])) for c, o in zip(cm, os_))
        print(f"{name:<{width}} {unit:<14} {ours:>12.10g} {theirs:>12.10g} {'equal' if same else 'DIFFERENT':>15}")
        continue
    ratios = [c[name][0] / o[name][0] for c, o in zip(cm, os_)]
    print(f"{name:<{width}} {unit:<14} {ours:>12.6g} {theirs:>12.6g} {statistics.median(ratios):>14.2f}x "
          f"{min(ratios):>6.2f}..{max(ratios):.2f}")
EOF

#!/usr/bin/env bash
# configs/: every reference config validates (`moe plan` exits 0) and its plan equals the committed
# configs/plans/NAME.txt; then, on a copy, that a changed config, a missing plan or layout line and an
# invalid key each fail the check with a line naming them.
# Usage: reference_configs.sh MOE_BINARY SOURCE_DIR
set -u
moe=$1
src=$2
fail() { echo "FAIL: $*"; exit 1; }
"$src/configs/make_plans.sh" --check "$moe" || fail "the committed configs/plans do not match (above)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/configs/plans"
cp "$src/configs/make_plans.sh" "$src/configs/switch_small.toml" "$tmp/configs/"
cp "$src/configs/plans/switch_small.txt" "$tmp/configs/plans/"
expect_fail() {  # expect_fail PATTERN: the check fails and prints PATTERN
  local out
  out=$("$tmp/configs/make_plans.sh" --check "$moe" 2>&1) && fail "the check passed, expected '$1':"$'\n'"$out"
  grep -qF -- "$1" <<<"$out" || fail "no '$1' in:"$'\n'"$out"
}
"$tmp/configs/make_plans.sh" --check "$moe" >/dev/null || fail "the copy does not pass the check"
# A change of the config (or of the engine's accounting) shows up as a diff.
sed -i 's/^num_experts = 8$/num_experts = 16/' "$tmp/configs/switch_small.toml"
expect_fail "moe plan configs/switch_small.toml --world 1 differs from configs/plans/switch_small.txt"
expect_fail "+parameters: 515992320 (516.0M)"
# Regenerating makes it pass again.
"$tmp/configs/make_plans.sh" "$moe" >/dev/null || fail "make_plans.sh failed on the copy"
"$tmp/configs/make_plans.sh" --check "$moe" >/dev/null || fail "the regenerated plan does not pass the check"
# A config without its plan, a plan without its config, a config without a layout line, a bad key.
cp "$tmp/configs/switch_small.toml" "$tmp/configs/extra.toml"
expect_fail "configs/plans/extra.txt is missing (run configs/make_plans.sh)"
mv "$tmp/configs/extra.toml" "$tmp/configs/gone.toml.bak"
cp "$tmp/configs/plans/switch_small.txt" "$tmp/configs/plans/gone.txt"
expect_fail "configs/plans/gone.txt has no configs/gone.toml"
rm "$tmp/configs/plans/gone.txt"
sed -i '/^# plan-world:/d' "$tmp/configs/switch_small.toml"
expect_fail "configs/switch_small.toml has no '# plan-world: N' line"
echo "# plan-world: 1" >>"$tmp/configs/switch_small.toml"
sed -i 's/^d_model = 768$/d_modle = 768/' "$tmp/configs/switch_small.toml"
expect_fail "unknown key 'model.d_modle'"
echo "reference configs: OK"
